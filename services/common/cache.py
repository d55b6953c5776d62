"""Lab 3's plumbing (no caching logic here - that is the lab): the products table, the cache key
names the grader reads, a Redis client that cannot block forever, and CLIENT spans for database
and Redis calls that follow the OpenTelemetry database conventions.

The contract with the grader (labs/lab-3-redis-cache/README.md, "The cache's contract"):
- product `id` is cached under `product_key(id)` = `<LAB_NAMESPACE>:product:<id>` as JSON with an
  integer "version" (the row's version); an entry that holds the product has its fields too
  ("id", "name", "price_cents");
- every key the service writes starts with `<LAB_NAMESPACE>:` (the run's Redis user may not
  touch any other key).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterator

import psycopg
import redis
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .config import env

PRODUCTS_DDL = """
CREATE TABLE IF NOT EXISTS products (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    price_cents integer NOT NULL CHECK (price_cents >= 0),
    version     integer NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
)"""


def create_schema(conn: psycopg.Connection) -> None:
    """The products table, safe when several processes start at once."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('lab3-schema'))")
        conn.execute(PRODUCTS_DDL)


def namespace() -> str:
    return os.environ.get("LAB_NAMESPACE", "")


def key(*parts: str) -> str:
    """`<LAB_NAMESPACE>:part1:part2...` - every Redis key of this lab must start like this."""
    prefix = namespace()
    return ":".join([prefix, *parts] if prefix else list(parts))


def product_key(product_id: str) -> str:
    return key("product", product_id)


def redis_client(timeout: float = 1.0, retries: int = 1, max_connections: int = 64) -> redis.Redis:
    """A Redis client from REDIS_URL that fails fast instead of hanging: connect and socket
    timeouts of `timeout` seconds, `retries` quick retries with back-off on connection errors and
    timeouts, a bounded connection pool (a request that cannot get a connection at once fails).
    A failed call raises redis.RedisError: catch it and degrade, never let it become a 500."""
    pool = redis.BlockingConnectionPool.from_url(
        env("REDIS_URL"), max_connections=max_connections, timeout=timeout,
        socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=5,
        retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), retries),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError])
    return redis.Redis(connection_pool=pool)


@contextmanager
def client_span(tracer: trace.Tracer, system: str, operation: str, target: str = "",
                **attributes: Any) -> Iterator[trace.Span]:
    """A CLIENT span for one database call, per the OpenTelemetry database conventions:
    db.system.name ("redis" or "postgresql"), db.operation.name, db.collection.name or
    db.namespace, server.address/port. Records an exception as an ERROR status and re-raises."""
    attrs = {"db.system.name": system, "db.operation.name": operation, **attributes}
    name = f"{operation} {target}".strip()
    with tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attrs,
                                      record_exception=False, set_status_on_exception=False) as span:
        try:
            yield span
        except Exception as e:
            span.set_status(Status(StatusCode.ERROR, type(e).__name__))
            span.set_attribute("error.type", type(e).__name__)
            raise


@contextmanager
def server_span(tracer: trace.Tracer, method: str, route: str, path: str, headers: Any) -> Iterator[trace.Span]:
    """A SERVER span for one HTTP request that continues the caller's traceparent (HTTP semantic
    conventions: http.request.method, http.route, url.path; set http.response.status_code on it)."""
    from .telemetry import extract_http

    with tracer.start_as_current_span(f"{method} {route}", context=extract_http(headers), kind=SpanKind.SERVER,
                                      record_exception=False, set_status_on_exception=False,
                                      attributes={"http.request.method": method, "http.route": route,
                                                  "url.path": path, "url.scheme": "http"}) as span:
        yield span
