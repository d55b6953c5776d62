"""What every order API (reference, starter, variants) shares besides the lesson: the request
models, the orders it has placed, and the FastAPI/uvicorn wiring around an `OrderApi` class."""
from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Callable

import psycopg
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from opentelemetry import trace
from opentelemetry.context import Context
from psycopg_pool import ConnectionPool
from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.common import db
from services.common.config import namespaced
from services.common.http import ApiError, json_app, serve
from services.common.log import get_logger
from services.common.telemetry import extract_http
from services.common.telemetry import setup as setup_telemetry

from .events import make_event, storable_text
from .publisher import PublishError, Publisher

log = get_logger("order_api")
tracer = trace.get_tracer("order_api")

REGISTRY_SCHEMA = """
CREATE TABLE IF NOT EXISTS order_api_orders (
    order_id     text PRIMARY KEY,
    customer_id  text NOT NULL,
    amount_cents bigint NOT NULL,
    status       text NOT NULL
);
"""


class OrderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customer_id: str = Field(min_length=1, max_length=64)
    amount_cents: int = Field(ge=1, le=1_000_000_000, strict=True)

    @field_validator("customer_id")
    @classmethod
    def storable(cls, value: str) -> str:
        if not storable_text(value):
            raise ValueError("must not contain NUL or unpaired surrogates")
        return value


class CancelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OrderRegistry:
    """The orders this API placed, so a cancel of an unknown id is a 404, not an event."""

    def add(self, conn: psycopg.Connection, order_id: str, customer_id: str, amount_cents: int) -> None:
        conn.execute("""INSERT INTO order_api_orders VALUES (%s, %s, %s, 'placed')
                        ON CONFLICT (order_id) DO NOTHING""", (order_id, customer_id, amount_cents))

    def get(self, conn: psycopg.Connection, order_id: str) -> tuple[str, int, str] | None:
        if not storable_text(order_id) or len(order_id) > 200:  # cannot be an id this API gave out
            return None
        return conn.execute("SELECT customer_id, amount_cents, status FROM order_api_orders WHERE order_id = %s",
                            (order_id,)).fetchone()

    def mark_cancelled(self, conn: psycopg.Connection, order_id: str) -> None:
        conn.execute("UPDATE order_api_orders SET status = 'cancelled' WHERE order_id = %s", (order_id,))


class OrderApiBase:
    """Connections, publisher and registry; subclasses implement place() and cancel()."""

    schema = ""  # extra tables a subclass needs (e.g. idempotency keys)

    def __init__(self, pool: ConnectionPool, publisher: Publisher) -> None:
        self.pool, self.publisher, self.registry = pool, publisher, OrderRegistry()
        with self.pool.connection() as conn:
            conn.execute(REGISTRY_SCHEMA + self.schema)

    def publish(self, event: dict) -> None:
        """Wait for the broker's acknowledgement; 503 if it does not come."""
        try:
            self.publisher.publish(event)
        except PublishError as e:
            log.warning("publish of %s %s failed: %s", event["type"], event["order_id"], e)
            raise ApiError(503, "broker_unavailable", "the event was not acknowledged; retry with the same key") from None

    def event(self, type_: str, order_id: str, customer_id: str, amount_cents: int, event_id: str | None = None) -> dict:
        return make_event(type_, order_id, customer_id, amount_cents, event_id)

    def place(self, key: str | None, raw: bytes) -> JSONResponse:
        raise NotImplementedError

    def cancel(self, order_id: str, key: str | None, raw: bytes) -> JSONResponse:
        raise NotImplementedError


def traced(route: str, handler: Callable[..., Response], *args, context: Context | None = None,
           path: str | None = None) -> Response:
    """Run a handler in a server span (on the worker thread, so the publish span nests in it) that
    continues the caller's trace (`context`, from the request's traceparent)."""
    with tracer.start_as_current_span(f"POST {route}", context=context, kind=trace.SpanKind.SERVER,
                                      record_exception=False, set_status_on_exception=False,
                                      attributes={"http.request.method": "POST", "http.route": route,
                                                  "url.path": path or route, "url.scheme": "http"}) as span:
        try:
            response = handler(*args)
            status = response.status_code
            return response
        except ApiError as e:
            status = e.status
            raise
        except Exception:
            status = 500
            raise
        finally:
            span.set_attribute("http.response.status_code", status)
            if status >= 500:  # a 4xx is the client's error, not this server's (HTTP semantic conventions)
                span.set_status(trace.StatusCode.ERROR)


def create_app(api_class: type[OrderApiBase], publisher_class: type[Publisher] = Publisher) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        setup_telemetry("order_api")
        pool = db.pool()
        publisher = publisher_class(namespaced("orders"))
        app.state.api = api_class(pool, publisher)
        log.info("ready: publishing to %s", publisher.topic)
        yield
        publisher.close()
        pool.close()

    return order_routes("order-api", lifespan)


def order_routes(title: str, lifespan) -> FastAPI:
    """The order endpoints, calling `app.state.api` (anything with place() and cancel(), set up by
    `lifespan`) on a worker thread inside a server span."""
    app = json_app(title)
    app.router.lifespan_context = lifespan

    @app.post("/orders")
    async def place(request: Request) -> JSONResponse:
        body = await request.body()  # raw bytes: the API validates (and fingerprints) them itself
        return await run_in_threadpool(traced, "/orders", request.app.state.api.place,
                                       request.headers.get("idempotency-key"), body,
                                       context=extract_http(request.headers), path=request.url.path)

    @app.post("/orders/{order_id}/cancel")
    async def cancel(order_id: str, request: Request) -> JSONResponse:
        body = await request.body()
        return await run_in_threadpool(traced, "/orders/{order_id}/cancel", request.app.state.api.cancel, order_id,
                                       request.headers.get("idempotency-key"), body,
                                       context=extract_http(request.headers), path=request.url.path)

    return app


def serve_api(api_class: type[OrderApiBase], publisher_class: type[Publisher] = Publisher) -> None:
    serve(create_app(api_class, publisher_class))
