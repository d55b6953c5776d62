"""PostgreSQL connections from DATABASE_URL."""
from __future__ import annotations

import psycopg
from psycopg_pool import ConnectionPool

from .config import env


def connect(autocommit: bool = False) -> psycopg.Connection:
    return psycopg.connect(env("DATABASE_URL"), autocommit=autocommit, connect_timeout=10)


def pool(max_size: int = 16) -> ConnectionPool:
    """A pool for request handlers; `with pool.connection() as conn:` commits on success."""
    p = ConnectionPool(env("DATABASE_URL"), min_size=1, max_size=max_size, open=False,
                       kwargs={"connect_timeout": 10})
    p.open(wait=True, timeout=30)
    return p
