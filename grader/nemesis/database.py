"""Faults inside a run's database, made as the run's own role (`Namespace.owner_url`): it owns the
tables, which is all a trigger needs. Never as a superuser: the database is the submission's, and
anything it holds (a schema, a function, an operator) must not run with more rights than its own."""
from __future__ import annotations

import psycopg
from psycopg import sql

from .base import Fault, Need, Target

FUNCTION = "labkit_reject_commit"
SCHEMA = "public"  # where the labs' tables are (the contract); the function goes there too


def _deferred_trigger(conn, name: str, table: str, column: str, prefix: str, body: str) -> None:
    """A deferred constraint trigger on `public.table`: `body` (plpgsql) runs at COMMIT for every
    inserted row whose `column` starts with `prefix`. Names qualified and the function's search_path
    pinned: nothing the submission defines stands in for starts_with or pg_sleep."""
    fn = sql.Identifier(SCHEMA, name)
    conn.execute(sql.SQL("""
        CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql
        SET search_path = pg_catalog, pg_temp AS $$
        BEGIN
          IF pg_catalog.starts_with(NEW.{col}::pg_catalog.text, {prefix}) THEN
            {body}
          END IF;
          RETURN NULL;
        END $$""").format(fn=fn, col=sql.Identifier(column), prefix=sql.Literal(prefix), body=sql.SQL(body)))
    conn.execute(sql.SQL("""CREATE CONSTRAINT TRIGGER {trigger} AFTER INSERT ON {table}
                            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {fn}()""").format(
        trigger=sql.Identifier(name), table=sql.Identifier(SCHEMA, table), fn=fn))


class RejectCommits(Fault):
    """Make PostgreSQL refuse, at COMMIT, every transaction that inserted a row into `table` whose
    `column` starts with `prefix` (a deferred constraint trigger): such a request certainly rolled
    back, whatever the service answers.

    Probes dual writes: a service that sends its event to the broker before (or beside) the
    database commit publishes an event for an order that never existed - a phantom.
    Needs the service to have created `table` first. Effective once the trigger is in place.
    """

    kind = "reject-commits"

    def __init__(self, url: str, table: str, column: str, prefix: str) -> None:
        super().__init__(table)
        self.url, self.column, self.prefix = url, column, prefix

    def needs(self) -> list[Need]:
        return [Need("server", "postgres")]

    def inject(self, run: Target) -> None:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
            _deferred_trigger(conn, f"{FUNCTION}_{self.id}", self.target, self.column, self.prefix,
                              "RAISE EXCEPTION 'labkit: this order is refused at commit (a fault the grader injected)';")
        self.effective = True
        self.detail = {"prefix": self.prefix}

    def heal(self, run: Target) -> None:
        """The trigger stays for the run: rejected rows must stay rejected if a client retries."""

    def describe(self) -> str:
        return f"refuse at COMMIT every insert into {self.target} whose {self.column} starts with {self.prefix!r}"


class StallCommits(Fault):
    """Make every transaction that inserted a row into `table` whose `column` starts with `prefix`
    take `seconds` longer at COMMIT (a deferred trigger sleeping), while other transactions commit.

    Probes readers that assume allocation order is commit order: a relay polling the outbox by its
    id/sequence reads the rows committed around the slow one and skips it for good; log-based CDC
    sees it in commit order. The database does it, whatever the service's code looks like.
    Effective once the trigger is in place; the workload sends the marked orders.
    """

    kind = "stall-commits"

    def __init__(self, url: str, table: str, column: str, prefix: str, seconds: float = 3.0) -> None:
        super().__init__(table)
        self.url, self.column, self.prefix, self.seconds = url, column, prefix, seconds

    def needs(self) -> list[Need]:
        return [Need("server", "postgres")]

    def inject(self, run: Target) -> None:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
            _deferred_trigger(conn, f"labkit_stall_commit_{self.id}", self.target, self.column, self.prefix,
                              f"PERFORM pg_catalog.pg_sleep({float(self.seconds)});")
        self.effective = True
        self.detail = {"prefix": self.prefix, "seconds": self.seconds}

    def heal(self, run: Target) -> None:
        """The trigger stays for the run."""

    def describe(self) -> str:
        return (f"delay by {self.seconds:g} s the COMMIT of every insert into {self.target} whose {self.column} "
                f"starts with {self.prefix!r}")
