"""Reading tables with the grader's own PostgreSQL connection."""
from __future__ import annotations

import time
from typing import Callable

import psycopg

from ..history import History


def _plain(value):
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


def observe_rows(history: History, what: str, url: str, queries: dict[str, str]) -> dict:
    """Run each query, record {name: rows} as one observation `what`; an error is recorded too."""
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            data = {name: [[_plain(v) for v in row] for row in conn.execute(sql)] for name, sql in queries.items()}
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
