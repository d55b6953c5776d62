"""Catalog service (lab 3 reference): products in PostgreSQL, read through a Redis cache.

GET /products/{id} is cache-aside:
  1. GET the product's key. An entry with the product's fields is a hit; a negative entry
     ({"version": 0, "missing": true}) is a cached 404; an invalidation marker
     ({"version": v, "stale": true}) or nothing is a miss.
  2. On a miss, only ONE request per key fills the cache (stampede protection): it takes a lock
     (`SET lock token NX PX 2000`), reads the row and writes the entry; everyone else polls the
     cache - and tries the lock again, so a lock whose holder died expires and is taken over.
     The lock is released only by its holder: a Lua script deletes it only if it still holds
     the holder's own token (a holder that overran the TTL must not delete its successor's lock).
  3. The entry is written by a Lua script only if the cache holds nothing newer (versioned set):
     a slow miss that read version 3 cannot overwrite the marker of version 4 that the
     invalidator wrote meanwhile (the stale-set race).
  TTL: 30 s with +-10 % jitter (keys filled together do not expire together); misses: 2 s.

PUT /products/{id} {"name", "price_cents", "version"} updates the row if its version is still
`version` (0 creates it) and bumps it; 409 otherwise. It does not touch the cache: the invalidator
reads the committed change from the database's log and marks the entry stale (services/invalidator).

Redis down (refused, reset, timed out, auth lost after a restart): served from PostgreSQL. Calls
fail fast (1 s timeouts, one retry) and a breaker skips Redis for a second after three refused or
reset connections in a row, or a timeout when no call has worked for 2 s (a slow call on a busy
machine is not an outage: it must not send every reader of a hot key to the database), so latency stays bounded; then Redis is tried again and the hit ratio comes back.
"""
from __future__ import annotations

import json
import random
import threading
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any

import redis
from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from opentelemetry.trace import StatusCode
from psycopg_pool import ConnectionPool
from pydantic import BaseModel, Field

from services.common import db
from services.common.cache import client_span, create_schema, key, product_key, redis_client, server_span
from services.common.http import ApiError, json_app, parse_body, serve
from services.common.log import get_logger
from services.common.telemetry import setup as setup_telemetry

log = get_logger("catalog")

TTL_MS = 30_000
JITTER = 0.10
NEGATIVE_TTL_MS = 2_000
LOCK_TTL_MS = 2_000
WAIT_FOR_FILL_S = 5.0  # a waiter then reads the database itself: latency stays bounded
POLL_S = 0.01
BREAKER_S = 1.0
BREAKER_AFTER = 3  # refused/reset/auth errors in a row open the breaker...
NOTHING_WORKED_S = 2.0  # ... or timeouts when no call at all has succeeded for this long
REDIS_TIMEOUT_S = 1.0
RETRY_LOCK_S = 0.25  # a waiter tries the lock again this often (its holder may have died)

# Write `entry` unless the cache holds a newer version, or this version with its data already.
FILL = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, e = pcall(cjson.decode, cur)
  if ok and type(e) == 'table' and tonumber(e['version']) then
    local v = tonumber(e['version'])
    if v > tonumber(ARGV[2]) or (v == tonumber(ARGV[2]) and e['name'] ~= nil) then return 0 end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"""
# Delete the lock only if it is still ours.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class ProductIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    price_cents: int = Field(ge=0)
    version: int = Field(ge=0)  # the version the client read (0: create)


class RedisDown(Exception):
    pass


class Catalog:
    def __init__(self, pool: ConnectionPool, cache: redis.Redis, tracer) -> None:
        self.pool, self.redis, self.tracer = pool, cache, tracer
        self.fill_script = cache.register_script(FILL)
        self.release_script = cache.register_script(RELEASE)
        self._down_until = 0.0
        self._failures = 0
        self._last_ok = time.monotonic()
        self._breaker = threading.Lock()
        kwargs = cache.connection_pool.connection_kwargs
        self.redis_attrs = {"server.address": kwargs.get("host", ""), "server.port": kwargs.get("port", 0),
                            "db.namespace": str(kwargs.get("db", 0))}
        with pool.connection() as conn:
            create_schema(conn)

    # --- Redis, failing fast -----------------------------------------------------------------
    def cached(self, operation: str, call, *args, **kwargs) -> Any:
        """One Redis call in a CLIENT span; RedisDown if Redis is unreachable (or was a moment ago)."""
        if self.breaker_open():
            raise RedisDown("breaker open")
        try:
            with client_span(self.tracer, "redis", operation, **self.redis_attrs):
                result = call(*args, **kwargs)
            self._failures, self._last_ok = 0, time.monotonic()
            return result
        except redis.RedisError as e:
            with self._breaker:
                # Refused, reset, auth lost: a few in a row and Redis is down. Timeouts: a busy Redis
                # (or a busy machine) is slow, not gone - unless nothing at all has worked for a while.
                self._failures += 1
                now = time.monotonic()
                if isinstance(e, redis.TimeoutError):
                    down = now - self._last_ok > NOTHING_WORKED_S
                else:
                    down = self._failures >= BREAKER_AFTER
                if down and not self.breaker_open():
                    self._down_until = now + BREAKER_S
                    log.warning("redis unavailable (%s): serving from PostgreSQL for %.0f s", type(e).__name__,
                                BREAKER_S)
            raise RedisDown(str(e)) from e

    def cache_get(self, product_id: str) -> dict | None:
        raw = self.cached("GET", self.redis.get, product_key(product_id))
        try:
            entry = json.loads(raw) if raw else None
        except ValueError:
            return None
        return entry if isinstance(entry, dict) else None

    def ttl_ms(self) -> int:
        return int(TTL_MS * random.uniform(1 - JITTER, 1 + JITTER))

    def fill(self, product_id: str, row: dict | None) -> None:
        if row is None:
            entry, version, ttl = {"version": 0, "missing": True}, 0, NEGATIVE_TTL_MS
        else:
            entry, version, ttl = row, row["version"], self.ttl_ms()
        self.cached("EVALSHA", self.fill_script, keys=[product_key(product_id)],
                    args=[json.dumps(entry), version, ttl])

    def acquire(self, product_id: str) -> str | None:
        token = uuid.uuid4().hex
        got = self.cached("SET", self.redis.set, key("lock", "product", product_id), token, nx=True, px=LOCK_TTL_MS)
        return token if got else None

    def release(self, product_id: str, token: str) -> None:
        self.cached("EVALSHA", self.release_script, keys=[key("lock", "product", product_id)], args=[token])

    # --- PostgreSQL ----------------------------------------------------------------------------
    def read_db(self, product_id: str) -> dict | None:
        sql = "SELECT id, name, price_cents, version FROM products WHERE id = %s"
        with client_span(self.tracer, "postgresql", "SELECT", "products", **{"db.collection.name": "products",
                                                                            "db.query.text": sql}):
            with self.pool.connection() as conn:
                row = conn.execute(sql, (product_id,)).fetchone()
        return None if row is None else {"id": row[0], "name": row[1], "price_cents": row[2], "version": row[3]}

    # --- the API -------------------------------------------------------------------------------
    def get(self, product_id: str, span) -> tuple[int, dict]:
        try:
            return self.get_cached(product_id, span)
        except RedisDown:
            span.set_attribute("cache.hit", False)
            span.set_attribute("cache.degraded", True)
            return answer(self.read_db(product_id))

    def get_cached(self, product_id: str, span) -> tuple[int, dict]:
        try:
            entry = self.cache_get(product_id)
        except RedisDown:
            if self.breaker_open():
                raise
            entry = None  # one slow call: a miss, and the lock still guards the database
        if hit(entry):
            span.set_attribute("cache.hit", True)
            return from_entry(entry)
        span.set_attribute("cache.hit", False)
        deadline = time.monotonic() + WAIT_FOR_FILL_S
        next_try, poll = 0.0, POLL_S
        while time.monotonic() < deadline:
            try:
                if time.monotonic() >= next_try:
                    token = self.acquire(product_id)
                    if token:
                        return self.fill_as_holder(product_id, token)
                    next_try = time.monotonic() + RETRY_LOCK_S
                time.sleep(poll)
                poll = min(poll * 1.5, 0.1)  # hundreds of waiters must not flood Redis
                entry = self.cache_get(product_id)
                if hit(entry):
                    return from_entry(entry)
            except RedisDown:
                if self.breaker_open():
                    raise  # an outage: serve from the database
                # one failed call while Redis is up: keep waiting for the holder, do not stampede
        return answer(self.read_db(product_id))  # the filler is stuck: do not wait forever

    def fill_as_holder(self, product_id: str, token: str) -> tuple[int, dict]:
        try:
            entry = self.cache_get(product_id)  # filled while we waited for the lock?
            if hit(entry):
                return from_entry(entry)
            row = self.read_db(product_id)
            try:
                self.fill(product_id, row)
            except RedisDown:
                pass  # answered from the row all the same; the next miss fills
            return answer(row)
        finally:
            try:
                self.release(product_id, token)
            except RedisDown:
                pass  # the lock expires by itself

    def breaker_open(self) -> bool:
        return time.monotonic() < self._down_until

    def put(self, product_id: str, raw: bytes) -> tuple[int, dict]:
        _, product = parse_body(raw, ProductIn)
        with self.pool.connection() as conn, conn.transaction():
            if product.version == 0:
                row = conn.execute("""INSERT INTO products (id, name, price_cents, version) VALUES (%s, %s, %s, 1)
                                      ON CONFLICT (id) DO NOTHING RETURNING version""",
                                   (product_id, product.name, product.price_cents)).fetchone()
            else:
                row = conn.execute("""UPDATE products SET name = %s, price_cents = %s, version = version + 1,
                                      updated_at = now() WHERE id = %s AND version = %s RETURNING version""",
                                   (product.name, product.price_cents, product_id, product.version)).fetchone()
            if row is None:
                current = conn.execute("SELECT version FROM products WHERE id = %s", (product_id,)).fetchone()
                raise ApiError(409, "version_conflict", {"current_version": current[0] if current else 0})
        return 200, {"id": product_id, "name": product.name, "price_cents": product.price_cents, "version": row[0]}


def hit(entry: dict | None) -> bool:
    return entry is not None and ("name" in entry or entry.get("missing") is True)


def from_entry(entry: dict) -> tuple[int, dict]:
    if entry.get("missing"):
        return 404, {"error": "product_not_found"}
    return 200, {k: entry[k] for k in ("id", "name", "price_cents", "version") if k in entry}


def answer(row: dict | None) -> tuple[int, dict]:
    return (404, {"error": "product_not_found"}) if row is None else (200, row)


def handle(catalog: Catalog, method: str, route: str, request: Request, fn, *args) -> Response:
    with server_span(catalog.tracer, method, route, request.url.path, request.headers) as span:
        status = 500
        try:
            status, body = fn(*args, span) if method == "GET" else fn(*args)
            return JSONResponse(body, status)
        except ApiError as e:
            status = e.status
            return e.response()
        finally:
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(StatusCode.ERROR)


def create_app(catalog_class: type[Catalog] = Catalog):
    @asynccontextmanager
    async def lifespan(app):
        tracer = setup_telemetry("catalog")
        pool = db.pool(max_size=16)
        app.state.catalog = catalog_class(pool, redis_client(timeout=REDIS_TIMEOUT_S), tracer)
        log.info("ready: cache-aside with a per-key lock and versioned sets")
        yield
        pool.close()

    app = json_app("catalog")
    app.router.lifespan_context = lifespan

    @app.get("/products/{product_id}")
    async def get_product(product_id: str, request: Request) -> Response:
        catalog = request.app.state.catalog
        return await run_in_threadpool(handle, catalog, "GET", "/products/{product_id}", request, catalog.get,
                                       product_id)

    @app.put("/products/{product_id}")
    async def put_product(product_id: str, request: Request) -> Response:
        catalog = request.app.state.catalog
        body = await request.body()
        return await run_in_threadpool(handle, catalog, "PUT", "/products/{product_id}", request, catalog.put,
                                       product_id, body)

    return app


def main(catalog_class: type[Catalog] = Catalog) -> None:
    serve(create_app(catalog_class))
