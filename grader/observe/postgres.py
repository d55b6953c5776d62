"""Reading tables with the grader's own PostgreSQL connection: the run's reader role
(Namespace.reader_url), which reads that run's tables and nothing else, search_path pinned to
pg_catalog; every statement names its schema, since the submission owns the database."""
from __future__ import annotations

import time
from typing import Callable

import psycopg

from ..history import History


def _plain(value):
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


def _pinned_rows(conn, sql: str) -> list[list]:
    # A view of the submission's may call a function that moves search_path for the rest of the
    # session: pin it again before each of the grader's statements.
    conn.execute("SET search_path = pg_catalog, pg_temp")
    return [[_plain(v) for v in row] for row in conn.execute(sql)]


def observe_rows(history: History, what: str, url: str, queries: dict[str, str]) -> dict:
    """Run each query, record {name: rows} as one observation `what`; an error is recorded too.
    `url` is the run's reader (Namespace.reader_url); queries name their schemas (`public.orders`)."""
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            data = {name: _pinned_rows(conn, sql) for name, sql in queries.items()}
    except psycopg.Error as e:
        data = {"error": str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}
    history.observe(what, **data)
    return data


def rows_stable(url: str, sql: str, seconds: float = 1.5) -> Callable[[], bool]:
    """A quiesce condition: the single number `sql` returns has not changed for `seconds`."""
    state = {"value": None, "since": time.monotonic()}

    def stable() -> bool:
        with psycopg.connect(url, connect_timeout=5) as conn:
            value = conn.execute(sql).fetchone()[0]
        if value != state["value"]:
            state.update(value=value, since=time.monotonic())
        return time.monotonic() - state["since"] >= seconds

    return stable


SLOTS_SQL = """SELECT slot_name, active, confirmed_flush_lsn::text, restart_lsn::text, pg_current_wal_lsn()::text,
                      (pg_current_wal_lsn() - restart_lsn)::bigint, (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint
               FROM pg_replication_slots WHERE database = current_database()"""


def observe_slots(history: History, url: str) -> list[dict]:
    """The run database's replication slots as the server reports them: LSNs, retained WAL bytes
    (current - restart_lsn) and lag bytes (current - confirmed_flush_lsn)."""
    with psycopg.connect(url, connect_timeout=5) as conn:
        rows = conn.execute(SLOTS_SQL).fetchall()
    slots = [{"slot": n, "active": a, "confirmed_flush_lsn": c, "restart_lsn": r, "current_lsn": cur,
              "retained_bytes": ret, "lag_bytes": lag} for n, a, c, r, cur, ret, lag in rows]
    history.observe("slots", slots=slots)
    return slots


def slot_sampler(url_of: Callable[[object], str], every: float = 1.0):
    """An observer (grader.scenario.Scenario.observers): the slots every `every` seconds."""
    def sample(run, done) -> None:
        while not done.wait(every):
            try:
                observe_slots(run.history, url_of(run))
            except psycopg.Error:
                pass  # the server is restarting: the next sample will tell
    return sample
