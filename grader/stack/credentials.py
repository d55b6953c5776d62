"""Per-run credentials: each Namespace gets a PostgreSQL role and database, a Redis ACL user and a
RabbitMQ user and vhost of its own, so one run's services cannot read or write another run's data.

The grader keeps the admin URLs (`Stack.url`) for managing the servers; a run's services only ever
see the URLs built here (`Namespace.env()`). The grader reads a run's data as a reader of that run
only (`<namespace>_grader`, `Namespace.reader_url`), never as an admin: everything in a run's
database and keys is shaped by the submission (grader/sandbox/README.md, "What the grader reads, and
as whom"). Kafka has no equivalent: Tansu has no ACLs, so topics are separated only by
the `<namespace>.` prefix (see grader/sandbox/README.md, "What stays reachable").

What each service may do with its own credentials:
- PostgreSQL: a LOGIN role with a scram password, owner of a database of the same name (so it can
  create tables and publications there), REPLICATION so CDC labs can create logical slots (only in a
  database it may connect to: CONNECT is revoked from PUBLIC), at most 64 connections, statements
  and idle transactions of at most 60 s (so a held lock cannot hang the grader's reads). pg_hba lets a
  role into its own database only (`sameuser`), and admits no replication-protocol connections.
  Its reader `<namespace>_grader`: LOGIN, no other attribute, CONNECT on the run's database only,
  SELECT on what the run's role creates (default privileges: never more than the run's role can
  read), read-only transactions, `search_path` pinned to `pg_catalog, pg_temp`.
- Redis: keys and pub/sub channels matching `<namespace>:*`; every command except @dangerous ones
  (FLUSHALL, KEYS, CONFIG, DEBUG, CLIENT KILL, MONITOR, ...). Lua scripts, SET NX PX, WATCH/MULTI
  and pub/sub work; a script touching another prefix is refused. Its reader `<namespace>_grader`:
  the same keys, no channels, only the commands the grader's observer sends (REDIS_READER_COMMANDS).
- RabbitMQ: a user with full rights on its own vhost `<namespace>` and nothing else.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import tempfile
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit, urlunsplit

if TYPE_CHECKING:
    from .base import Server

POSTGRES_CONNECTION_LIMIT = 64
# A run cannot hold locks forever (LOCK TABLE and sleep, or a transaction left open): the grader's
# own reads would wait behind it. Generous for a lab, short for a hang.
POSTGRES_ROLE_SETTINGS = {"statement_timeout": "60s", "idle_in_transaction_session_timeout": "60s"}
# Commands a run's Redis user may not call: @dangerous covers FLUSHALL/FLUSHDB, KEYS, CONFIG,
# DEBUG, SHUTDOWN, CLIENT, MONITOR, ACL, SWAPDB, MIGRATE, ...
REDIS_RULES = ("+@all", "-@dangerous")
# The grader's per-run Redis user: reads, plus the two writes its cache faults make on the run's own
# keys (DEL: a key expires now; PEXPIRE: a lock lease held longer).
REDIS_READER_COMMANDS = ("+ping", "+get", "+pttl", "+scan", "+del", "+pexpire")

# The grader's readers: one role per run (`<namespace>_grader`), all members of this group, which
# pg_hba admits into any database but the maintenance ones; CONNECT (granted on the run's database
# only) keeps each reader in its own run.
READER_GROUP = "labkit_readers"
READER_SUFFIX = "_grader"
READER_CONNECTION_LIMIT = 16
# Nothing a submission creates (a schema named after the reader, `public`, functions or operators
# shadowing pg_catalog's) resolves before pg_catalog; pg_temp last, as PostgreSQL's docs advise for
# SECURITY DEFINER functions. Set on the role and again on every connection (`pinned`).
PINNED_SEARCH_PATH = ("pg_catalog", "pg_temp")
READER_ROLE_SETTINGS = {"default_transaction_read_only": "on", "statement_timeout": "60s",
                        "idle_in_transaction_session_timeout": "60s"}


def new_password() -> str:
    return secrets.token_urlsafe(18)  # URL-safe: goes into URLs unquoted


def with_credentials(url: str, user: str, password: str, path: str | None = None) -> str:
    """`url` with user:password (and optionally a new path) in place of whatever it had."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc, path=parts.path if path is None else path))


# --- PostgreSQL -----------------------------------------------------------------------------------

def postgres_hba() -> str:
    """pg_hba.conf for servers the kit starts: passwords everywhere, each role into its own database,
    the grader's readers into no maintenance database (CONNECT keeps each in its own run's)."""
    return ("# labkit: no trust; the superuser by password, every other role only into its own database\n"
            "local   all       postgres                 scram-sha-256\n"
            "host    all       postgres  127.0.0.1/32   scram-sha-256\n"
            "host    sameuser  all       127.0.0.1/32   scram-sha-256\n"
            f"host    postgres,template0,template1  +{READER_GROUP}  127.0.0.1/32  reject\n"
            f"host    all       +{READER_GROUP}  127.0.0.1/32   scram-sha-256\n")


def reader_role(name: str) -> str:
    """The grader's reader of run `name` (PostgreSQL role, Redis user)."""
    return name + READER_SUFFIX


def pinned(url: str) -> str:
    """A PostgreSQL URL whose sessions start with the pinned search_path (whatever the role's setting)."""
    from urllib.parse import parse_qsl, urlencode

    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "options"]
    query.append(("options", "-c search_path=" + ",".join(PINNED_SEARCH_PATH)))
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def _search_path_sql():
    from psycopg import sql

    return sql.SQL(", ").join(sql.Identifier(s) for s in PINNED_SEARCH_PATH)


def provision_postgres(admin_url: str, name: str, password: str,
                       reader_password: str | None = None) -> tuple[str, str]:
    """The run's role and database, and the grader's reader of it: (service URL, reader URL).

    Where the admin may not create roles (an external server given without superuser), both are
    the admin's URL of the run's database, search_path pinned for the grader."""
    import psycopg
    from psycopg import sql

    role, db = sql.Identifier(name), sql.Identifier(name)
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        try:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(sql.SQL(verb + " ROLE {} LOGIN REPLICATION CONNECTION LIMIT {} PASSWORD {}").format(
                role, sql.Literal(POSTGRES_CONNECTION_LIMIT), sql.Literal(password)))
            for setting, value in POSTGRES_ROLE_SETTINGS.items():
                conn.execute(sql.SQL("ALTER ROLE {} SET {} = {}").format(role, sql.Identifier(setting),
                                                                         sql.Literal(value)))
            owned = True
        except psycopg.errors.InsufficientPrivilege:  # an external server given without superuser
            owned = False
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            if owned:
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(db, role))
            else:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(db))
        if not owned:
            return with_database(admin_url, name), pinned(with_database(admin_url, name))
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db))
        reader_password = reader_password or new_password()
        _provision_reader(conn, name, reader_password)
    with psycopg.connect(with_database(admin_url, name), autocommit=True, connect_timeout=10) as conn:
        _grant_reads(conn, name)
    return (with_credentials(admin_url, name, password, path="/" + name),
            pinned(with_credentials(admin_url, reader_role(name), reader_password, path="/" + name)))


def _provision_reader(conn, name: str, password: str) -> None:
    """The reader role (on the admin's connection): LOGIN and nothing else, CONNECT on the run's database."""
    import psycopg
    from psycopg import sql

    reader, group = sql.Identifier(reader_role(name)), sql.Identifier(READER_GROUP)
    if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (READER_GROUP,)).fetchone():
        try:
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(group))
        except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
            pass  # another run created it meanwhile
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (reader_role(name),)).fetchone()
    conn.execute(sql.SQL(("ALTER" if exists else "CREATE") + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                         "NOREPLICATION NOBYPASSRLS CONNECTION LIMIT {} PASSWORD {}").format(
        reader, sql.Literal(READER_CONNECTION_LIMIT), sql.Literal(password)))
    conn.execute(sql.SQL("GRANT {} TO {}").format(group, reader))
    conn.execute(sql.SQL("ALTER ROLE {} SET search_path = {}").format(reader, _search_path_sql()))
    for setting, value in READER_ROLE_SETTINGS.items():
        conn.execute(sql.SQL("ALTER ROLE {} SET {} = {}").format(reader, sql.Identifier(setting), sql.Literal(value)))
    conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(name), reader))


def _grant_reads(conn, name: str) -> None:
    """Inside the run's database (admin connection): the reader may read what the run's role creates
    (tables, views, sequences; USAGE of its schemas), nothing else; nobody but the run's role creates
    in `public` (already so from PostgreSQL 15)."""
    from psycopg import sql

    owner, reader = sql.Identifier(name), sql.Identifier(reader_role(name))
    conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(owner))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(reader))
    for objects, right in (("TABLES", "SELECT"), ("SEQUENCES", "SELECT"), ("SCHEMAS", "USAGE")):
        conn.execute(sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} GRANT " + right + " ON " + objects + " TO {}")
                     .format(owner, reader))


def drop_postgres(admin_url: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        for (slot,) in conn.execute("SELECT slot_name FROM pg_replication_slots WHERE database = %s",
                                    (name,)).fetchall():
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        for role in (reader_role(name), name):
            try:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
            except psycopg.errors.InsufficientPrivilege:
                pass


def with_database(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


# --- Redis ----------------------------------------------------------------------------------------

def provision_redis(admin_url: str, name: str, password: str,
                    reader_password: str | None = None) -> tuple[str, str] | None:
    """The run's ACL user and the grader's reader of its keys: (service URL, reader URL), or None
    where the server has no ACLs we may manage."""
    import redis

    reader_password = reader_password or new_password()
    client = redis.Redis.from_url(admin_url, socket_timeout=10)
    try:
        client.execute_command("ACL", "SETUSER", name, "reset", "on", f">{password}", f"~{name}:*",
                               "resetchannels", f"&{name}:*", *REDIS_RULES)
        client.execute_command("ACL", "SETUSER", reader_role(name), "reset", "on", f">{reader_password}",
                               f"~{name}:*", "resetchannels", "-@all", *REDIS_READER_COMMANDS)
    except redis.ResponseError:  # a server without ACLs (< 6) or an external one we may not manage
        return None
    finally:
        client.close()
    return (with_credentials(admin_url, name, password),
            with_credentials(admin_url, reader_role(name), reader_password))


def drop_redis(admin_url: str, name: str) -> None:
    import redis

    client = redis.Redis.from_url(admin_url, socket_timeout=10)
    try:
        try:
            client.execute_command("ACL", "DELUSER", name, reader_role(name))  # also closes their connections
        except redis.ResponseError:
            pass  # never provisioned (no ACLs here)
        cursor = 0
        while True:  # SCAN, not KEYS: never block the server for other runs
            cursor, keys = client.scan(cursor, match=f"{name}:*", count=1000)
            if keys:
                client.delete(*keys)
            if cursor == 0:
                break
    finally:
        client.close()


# --- RabbitMQ -------------------------------------------------------------------------------------

def rabbitmq_password_hash(password: str) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def rabbitmq_definitions(users: dict[str, tuple[str, str]], vhosts: list[str],
                         permissions: list[tuple[str, str]]) -> dict:
    """Definitions for `rabbitmqctl import_definitions`: users {name: (password, tags)},
    vhosts, and full permissions [(user, vhost)]. One call creates them all (each rabbitmqctl
    call boots an Erlang VM, ~1 s)."""
    return {
        "users": [{"name": u, "password_hash": rabbitmq_password_hash(p), "tags": tags,
                   "hashing_algorithm": "rabbit_password_hashing_sha256"} for u, (p, tags) in users.items()],
        "vhosts": [{"name": v} for v in vhosts],
        "permissions": [{"user": u, "vhost": v, "configure": ".*", "write": ".*", "read": ".*"}
                        for u, v in permissions],
    }


def import_rabbitmq_definitions(server: "Server", definitions: dict) -> None:
    # In the node's own work dir (0700, its user's), readable by the node that imports it and nobody else.
    workdir = getattr(getattr(server, "workdir", None), "path", None)
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="labkit-rabbitmq-", delete=False, dir=workdir) as f:
        json.dump(definitions, f)
    owner = getattr(server, "owner", lambda: None)()
    if owner:
        import pwd

        pw = pwd.getpwnam(owner)
        os.chown(f.name, pw.pw_uid, pw.pw_gid)
    try:
        server.rabbitmqctl("import_definitions", f.name)  # type: ignore[attr-defined]
    finally:
        os.unlink(f.name)


def provision_rabbitmq(server: "Server", name: str, password: str) -> str | None:
    if not hasattr(server, "rabbitmqctl"):
        return None  # this runtime cannot manage users: services share the admin URL (documented)
    import_rabbitmq_definitions(server, rabbitmq_definitions({name: (password, "")}, [name], [(name, name)]))
    return with_credentials(server.url, name, password, path="/" + name)


def drop_rabbitmq(server: "Server", name: str) -> None:
    if hasattr(server, "rabbitmqctl"):
        server.rabbitmqctl("delete_vhost", name)  # type: ignore[attr-defined]  # also its queues
        server.rabbitmqctl("delete_user", name)  # type: ignore[attr-defined]  # also closes its connections


# --- one entry point per direction ----------------------------------------------------------------

def provision(kind: str, server: "Server", name: str, password: str,
              reader_password: str | None = None) -> tuple[str | None, str | None]:
    """Create `name`'s own credentials on `server`, and the grader's reader where the kind has one:
    (the URL its services use, the grader's reader URL); None for what this kind or runtime has not
    (Kafka; RabbitMQ, whose run user the grader reads queues with; Redis without ACLs)."""
    if kind == "postgres":
        return provision_postgres(server.url, name, password, reader_password)
    if kind == "redis":
        return provision_redis(server.url, name, password, reader_password) or (None, None)
    if kind == "rabbitmq":
        return provision_rabbitmq(server, name, password), None
    return None, None


def drop(kind: str, server: "Server", name: str) -> None:
    if kind == "postgres":
        drop_postgres(server.url, name)
    elif kind == "redis":
        drop_redis(server.url, name)
    elif kind == "rabbitmq":
        drop_rabbitmq(server, name)
