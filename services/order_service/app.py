"""Order service (lab 2 reference): the order and its event commit together, or not at all.

No Kafka here. Each request writes its state change (`orders`) AND the event announcing it
(`outbox`) in ONE PostgreSQL transaction, which also stores the idempotency key's response. The CDC
relay publishes the outbox rows once they are committed. So there is no dual write: the event
exists exactly when the order does, whatever crashes when.

Idempotency keys work as in lab 1 (services.common.idempotency): the key is claimed in a short
transaction of its own first, so a concurrent retry sees it in progress (409).
"""
from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, Callable

import psycopg
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from psycopg_pool import ConnectionPool

from services.common import db
from services.common.http import parse_body, serve
from services.common.idempotency import Claim, IdempotencyStore, Replay, fingerprint, replayed, require_key
from services.common.log import get_logger
from services.common.orders.api import CancelIn, OrderIn, order_routes
from services.common.orders.events import storable_text
from services.common.outbox import events, schema
from services.common.telemetry import setup as setup_telemetry

log = get_logger("order_service")

Work = Callable[[psycopg.Connection, Claim], tuple[int, Any]]


class OrderService:
    store = IdempotencyStore()

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        with pool.connection() as conn:
            schema.create_schema(conn)
        with db.connect(autocommit=True) as conn:
            # Before the first order: decoding starts where the slot was created (see schema.py).
            self.slot, _ = schema.ensure_replication(conn)

    def idempotent(self, key: str, fp: str, work: Work) -> Response:
        """Claim the key; run `work` and store its response in ONE transaction; replay for retries."""
        with self.pool.connection() as conn:
            outcome = self.store.begin(conn, key, fp)  # committed at once: a concurrent retry gets 409
        if isinstance(outcome, Replay):
            return replayed(outcome)
        try:
            with self.pool.connection() as conn, conn.transaction():
                status, body = work(conn, outcome)
                response = JSONResponse(body, status)
                self.store.finish(conn, key, status, bytes(response.body))
        except BaseException:
            # Rolled back: no order, no outbox row. Release the key (keeping its ids) for a retry.
            with self.pool.connection() as conn:
                self.store.release(conn, key)
            raise
        return response

    def place(self, key: str | None, raw: bytes) -> Response:
        key = require_key(key)
        data, order = parse_body(raw, OrderIn)  # invalid input is rejected before the key is claimed

        def work(conn: psycopg.Connection, claim: Claim) -> tuple[int, Any]:
            order_id = claim.resource_id
            conn.execute("""INSERT INTO orders (order_id, customer_id, amount_cents, status, version)
                            VALUES (%s, %s, %s, 'placed', 1)""", (order_id, order.customer_id, order.amount_cents))
            payload = events.order_payload(order_id, order.customer_id, order.amount_cents, "placed", 1)
            events.append(conn, claim.event_id, events.ORDER, order_id, "OrderPlaced", payload,
                          events.current_traceparent())  # the request's trace, carried by the row
            return 201, {"order_id": order_id, "customer_id": order.customer_id,
                         "amount_cents": order.amount_cents, "status": "placed"}

        return self.idempotent(key, fingerprint("POST", "/orders", data), work)

    def cancel(self, order_id: str, key: str | None, raw: bytes) -> Response:
        key = require_key(key)
        data, _ = parse_body(raw, CancelIn, allow_empty=True)

        def work(conn: psycopg.Connection, claim: Claim) -> tuple[int, Any]:
            row = None
            if storable_text(order_id) and len(order_id) <= 200:  # else it cannot be an id we gave out
                row = conn.execute("""SELECT customer_id, amount_cents, status, version FROM orders
                                      WHERE order_id = %s FOR UPDATE""", (order_id,)).fetchone()
            if row is None:
                return 404, {"error": "order_not_found", "detail": f"no order {order_id}"}
            customer_id, amount, status, version = row
            if status != "cancelled":
                version += 1
                conn.execute("UPDATE orders SET status = 'cancelled', version = %s, updated_at = now() "
                             "WHERE order_id = %s", (version, order_id))
                payload = events.order_payload(order_id, customer_id, amount, "cancelled", version)
                events.append(conn, claim.event_id, events.ORDER, order_id, "OrderCancelled", payload,
                              events.current_traceparent())
            return 200, {"order_id": order_id, "status": "cancelled"}

        return self.idempotent(key, fingerprint("POST", f"/orders/{order_id}/cancel", data), work)


def create_app(service_class: type[OrderService] = OrderService) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        setup_telemetry("order_service")
        pool = db.pool()
        app.state.api = service_class(pool)
        log.info("ready: orders and their outbox rows in one transaction (slot %s)", app.state.api.slot)
        yield
        pool.close()

    return order_routes("order-service", lifespan)


def main() -> None:
    serve(create_app())
