"""Order API (reference): POST /orders and POST /orders/{id}/cancel, idempotent by key,
answering only after the broker acknowledged the event."""
from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from psycopg_pool import ConnectionPool

from services.common import db
from services.common.config import namespaced
from services.common.http import ApiError, json_app, parse_body, serve
from services.common.log import get_logger
from services.common.telemetry import setup as setup_telemetry
from services.orders.api import CancelIn, OrderIn, OrderRegistry
from services.orders.events import make_event
from services.orders.publisher import PublishError, Publisher

from .idempotency import Claim, IdempotencyStore, Replay, fingerprint

log = get_logger("order_api")


class OrderApi:
    """The request logic. Each step is a method so a variant can change exactly one."""

    def __init__(self, pool: ConnectionPool, publisher: Publisher, store: IdempotencyStore | None = None,
                 registry: OrderRegistry | None = None) -> None:
        self.pool, self.publisher = pool, publisher
        self.store = store or IdempotencyStore()
        self.registry = registry or OrderRegistry()
        with self.pool.connection() as conn:
            self.store.create_schema(conn)
            self.registry.create_schema(conn)

    def idempotent(self, key: str | None, fp: str, work: Callable[[Claim], tuple[int, Any]]) -> JSONResponse:
        if not key:
            raise ApiError(400, "idempotency_key_missing", "send an Idempotency-Key header with every POST")
        with self.pool.connection() as conn:
            outcome = self.store.begin(conn, key, fp)
        if isinstance(outcome, Replay):
            return JSONResponse(outcome.body, outcome.status, headers={"Idempotent-Replayed": "true"})
        try:
            status, body = work(outcome)
        except BaseException:
            with self.pool.connection() as conn:
                self.store.release(conn, key)
            raise
        with self.pool.connection() as conn:
            self.store.finish(conn, key, status, body)
        return JSONResponse(body, status)

    def publish(self, event: dict) -> None:
        try:
            self.publisher.publish(event)
        except PublishError as e:
            log.warning("publish of %s %s failed: %s", event["type"], event["order_id"], e)
            raise ApiError(503, "broker_unavailable", "the event was not acknowledged; retry with the same key") from None

    def place(self, key: str | None, raw: bytes) -> JSONResponse:
        if not key:
            raise ApiError(400, "idempotency_key_missing", "send an Idempotency-Key header with every POST")
        data, order = parse_body(raw, OrderIn)

        def work(claim: Claim) -> tuple[int, Any]:
            self.publish(make_event("OrderPlaced", claim.resource_id, order.customer_id, order.amount_cents,
                                    event_id=claim.event_id))
            with self.pool.connection() as conn:
                self.registry.add(conn, claim.resource_id, order.customer_id, order.amount_cents)
            return 201, {"order_id": claim.resource_id, "customer_id": order.customer_id,
                         "amount_cents": order.amount_cents, "status": "placed"}

        return self.idempotent(key, fingerprint("POST", "/orders", data), work)

    def cancel(self, order_id: str, key: str | None, raw: bytes) -> JSONResponse:
        if not key:
            raise ApiError(400, "idempotency_key_missing", "send an Idempotency-Key header with every POST")
        data, _ = parse_body(raw, CancelIn, allow_empty=True)

        def work(claim: Claim) -> tuple[int, Any]:
            with self.pool.connection() as conn:
                known = self.registry.get(conn, order_id)
            if known is None:
                return 404, {"error": "order_not_found", "detail": f"no order {order_id}"}
            customer_id, amount, status = known
            if status != "cancelled":
                self.publish(make_event("OrderCancelled", order_id, customer_id, amount, event_id=claim.event_id))
                with self.pool.connection() as conn:
                    self.registry.mark_cancelled(conn, order_id)
            return 200, {"order_id": order_id, "status": "cancelled"}

        return self.idempotent(key, fingerprint("POST", f"/orders/{order_id}/cancel", data), work)


def create_app(api_class: type[OrderApi] = OrderApi) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        setup_telemetry("order_api")
        pool = db.pool()
        publisher = Publisher(namespaced("orders"))
        app.state.api = api_class(pool, publisher)
        log.info("ready: publishing to %s", publisher.topic)
        yield
        publisher.close()
        pool.close()

    app = json_app("order-api")
    app.router.lifespan_context = lifespan

    @app.post("/orders")
    async def place(request: Request) -> JSONResponse:
        body = await request.body()
        return await run_in_threadpool(request.app.state.api.place, request.headers.get("idempotency-key"), body)

    @app.post("/orders/{order_id}/cancel")
    async def cancel(order_id: str, request: Request) -> JSONResponse:
        body = await request.body()
        return await run_in_threadpool(request.app.state.api.cancel, order_id,
                                       request.headers.get("idempotency-key"), body)

    return app


def main(api_class: type[OrderApi] = OrderApi) -> None:
    serve(create_app(api_class))
