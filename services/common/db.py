"""PostgreSQL connections from DATABASE_URL."""
from __future__ import annotations

import time

import psycopg
from psycopg_pool import ConnectionPool

from .config import env


def connect(autocommit: bool = False, retry_for: float = 30.0) -> psycopg.Connection:
    """A connection; while the server is restarting (refused, reset, "starting up") keep trying
    with back-off for up to `retry_for` seconds rather than failing on the first try."""
    deadline = time.monotonic() + retry_for
    delay = 0.1
    while True:
        try:
            return psycopg.connect(env("DATABASE_URL"), autocommit=autocommit, connect_timeout=10)
        except psycopg.OperationalError:
            if time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)  # back-off between attempts, not a wait for a condition we could poll
            delay = min(delay * 2, 2.0)


def pool(max_size: int = 16) -> ConnectionPool:
    """A pool for request handlers; `with pool.connection() as conn:` commits on success."""
    p = ConnectionPool(env("DATABASE_URL"), min_size=1, max_size=max_size, open=False,
                       kwargs={"connect_timeout": 10})
    p.open(wait=True, timeout=30)
    return p
