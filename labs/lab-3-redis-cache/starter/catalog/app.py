"""Catalog service - lab 3 starter. It runs: products in PostgreSQL, a plain cache-aside in Redis.
Your job is to make the cache correct under concurrency and failure (README: "Your tasks").

GET /products/{id}: look in Redis; on a miss read PostgreSQL and SET the entry.
PUT /products/{id} {"name", "price_cents", "version"}: update the row if its version is still
`version` (0 creates it), bump the version; 409 otherwise. The invalidator removes stale entries.

The cache's contract (the grader reads it with its own client): product `id` is cached under
services.common.cache.product_key(id) as JSON with "version" and, for a product, its fields.
"""
from __future__ import annotations

import json
from contextlib import asynccontextmanager

import redis
from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from opentelemetry.trace import StatusCode
from psycopg_pool import ConnectionPool
from pydantic import BaseModel, Field

from services.common import db
from services.common.cache import create_schema, product_key, redis_client, server_span
from services.common.http import ApiError, json_app, parse_body, serve
from services.common.log import get_logger
from services.common.telemetry import setup as setup_telemetry

log = get_logger("catalog")

TTL_MS = 30_000
NEGATIVE_TTL_MS = 2_000


class ProductIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    price_cents: int = Field(ge=0)
    version: int = Field(ge=0)  # the version the client read (0: create)


class Catalog:
    def __init__(self, pool: ConnectionPool, cache: redis.Redis, tracer) -> None:
        self.pool, self.redis, self.tracer = pool, cache, tracer
        with pool.connection() as conn:
            create_schema(conn)

    def ttl_ms(self) -> int:
        # TODO(lab3-1): add random jitter (e.g. +-10 %): keys filled together must not expire together.
        return TTL_MS

    def read_db(self, product_id: str) -> dict | None:
        # TODO(lab3-7): a CLIENT span for this call (services.common.cache.client_span(..., "postgresql", ...)).
        with self.pool.connection() as conn:
            row = conn.execute("SELECT id, name, price_cents, version FROM products WHERE id = %s",
                               (product_id,)).fetchone()
        return None if row is None else {"id": row[0], "name": row[1], "price_cents": row[2], "version": row[3]}

    def get(self, product_id: str, span) -> tuple[int, dict]:
        # TODO(lab3-6): Redis down (redis.RedisError) must not become a 500: serve from PostgreSQL,
        #               fail fast, and use the cache again when it is back.
        # TODO(lab3-7): set span attribute cache.hit (True/False); a CLIENT span per Redis call.
        raw = self.redis.get(product_key(product_id))
        entry = json.loads(raw) if raw else None
        if entry is not None and "name" in entry:
            return 200, entry
        if entry is not None and entry.get("missing"):
            return 404, {"error": "product_not_found"}
        # TODO(lab3-2): only ONE request per key may read the database and fill (a per-key lock:
        #               SET lock token NX PX <= 3000); the others wait for the cache (and retry the lock).
        # TODO(lab3-3): release the lock only if it still holds your token (a Lua script).
        row = self.read_db(product_id)
        # TODO(lab3-4): never overwrite a newer version: set the entry with a Lua script that compares
        #               versions (the invalidator writes markers {"version": v, "stale": true}).
        if row is None:
            self.redis.set(product_key(product_id), json.dumps({"version": 0, "missing": True}), px=NEGATIVE_TTL_MS)
            return 404, {"error": "product_not_found"}
        self.redis.set(product_key(product_id), json.dumps(row), px=self.ttl_ms())
        return 200, row

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


def create_app():
    @asynccontextmanager
    async def lifespan(app):
        tracer = setup_telemetry("catalog")
        pool = db.pool(max_size=16)
        app.state.catalog = Catalog(pool, redis_client(), tracer)
        log.info("ready (starter: plain cache-aside)")
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


def main() -> None:
    serve(create_app())
