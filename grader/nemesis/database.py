"""Faults inside the database the grader owns (it is the superuser of every run's database)."""
from __future__ import annotations

import psycopg
from psycopg import sql

from .base import Fault, Need, Target

FUNCTION = "labkit_reject_commit"


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
        trigger = sql.Identifier(f"{FUNCTION}_{self.id}")
        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("""
                CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                  IF starts_with(NEW.{col}::text, {prefix}) THEN
                    RAISE EXCEPTION 'labkit: this order is refused at commit (a fault the grader injected)';
                  END IF;
                  RETURN NULL;
                END $$""").format(fn=sql.Identifier(FUNCTION), col=sql.Identifier(self.column),
                                  prefix=sql.Literal(self.prefix)))
            conn.execute(sql.SQL("""CREATE CONSTRAINT TRIGGER {trigger} AFTER INSERT ON {table}
                                    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {fn}()""").format(
                trigger=trigger, table=sql.Identifier(self.target), fn=sql.Identifier(FUNCTION)))
        self.effective = True
        self.detail = {"prefix": self.prefix}

    def heal(self, run: Target) -> None:
        """The trigger stays for the run: rejected rows must stay rejected if a client retries."""

    def describe(self) -> str:
        return f"refuse at COMMIT every insert into {self.target} whose {self.column} starts with {self.prefix!r}"
