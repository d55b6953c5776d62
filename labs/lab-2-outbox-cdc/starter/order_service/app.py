"""Order service: your code for lab 2. Read ../README.md first.

`make lab-2` runs it with the relay, the projector, traffic and a live view; `make check-2` grades
it. Idempotency keys work as in lab 1 (services.common.idempotency); the tables, the outbox and
its replication slot come from services.common.outbox.schema. What is left here is the lesson.
"""
from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response
from psycopg_pool import ConnectionPool

from services.common import db
from services.common.http import parse_body, serve
from services.common.idempotency import Claim, IdempotencyStore, fingerprint, idempotent, require_key
from services.common.orders.api import CancelIn, OrderIn, order_routes
from services.common.orders.events import storable_text
from services.common.outbox import events, schema
from services.common.telemetry import setup as setup_telemetry


class OrderService:
    store = IdempotencyStore()

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        with pool.connection() as conn:
            schema.create_schema(conn)
        with db.connect(autocommit=True) as conn:
            self.slot, _ = schema.ensure_replication(conn)  # before the first order (see schema.py)

    def place(self, key: str | None, raw: bytes) -> Response:
        key = require_key(key)
        data, order = parse_body(raw, OrderIn)

        def work(claim: Claim) -> tuple[int, Any]:
            order_id = claim.resource_id
            payload = events.order_payload(order_id, order.customer_id, order.amount_cents, "placed", 1)
            # TODO(lab2-1): a dual write. The event is committed in one transaction, the order in a
            # second, the idempotency key's response (idempotent()) in a third. A crash or an error
            # between them leaves an event for an order that does not exist (a phantom), or an
            # order without its event (lost downstream). Write the order, the outbox row AND the
            # key's response in ONE transaction (self.store.finish(conn, ...) inside it).
            with self.pool.connection() as conn:
                # TODO(lab2-2): the trace stops here. Pass events.current_traceparent() (the request's
                # span) so the relay can continue the trace from the row.
                events.append(conn, claim.event_id, events.ORDER, order_id, "OrderPlaced", payload, None)
            with self.pool.connection() as conn:
                conn.execute("""INSERT INTO orders (order_id, customer_id, amount_cents, status, version)
                                VALUES (%s, %s, %s, 'placed', 1)""", (order_id, order.customer_id, order.amount_cents))
            return 201, {"order_id": order_id, "customer_id": order.customer_id,
                         "amount_cents": order.amount_cents, "status": "placed"}

        return idempotent(self.pool, self.store, key, fingerprint("POST", "/orders", data), work)

    def cancel(self, order_id: str, key: str | None, raw: bytes) -> Response:
        key = require_key(key)
        data, _ = parse_body(raw, CancelIn, allow_empty=True)

        def work(claim: Claim) -> tuple[int, Any]:
            if not (storable_text(order_id) and len(order_id) <= 200):
                return 404, {"error": "order_not_found", "detail": f"no order {order_id}"}
            with self.pool.connection() as conn:
                row = conn.execute("SELECT customer_id, amount_cents, status, version FROM orders WHERE order_id = %s",
                                   (order_id,)).fetchone()
            if row is None:
                return 404, {"error": "order_not_found", "detail": f"no order {order_id}"}
            customer_id, amount, status, version = row
            if status != "cancelled":
                payload = events.order_payload(order_id, customer_id, amount, "cancelled", version + 1)
                with self.pool.connection() as conn:  # TODO(lab2-1), TODO(lab2-2): as in place()
                    events.append(conn, claim.event_id, events.ORDER, order_id, "OrderCancelled", payload, None)
                with self.pool.connection() as conn:
                    conn.execute("UPDATE orders SET status = 'cancelled', version = %s, updated_at = now() "
                                 "WHERE order_id = %s", (version + 1, order_id))
            return 200, {"order_id": order_id, "status": "cancelled"}

        return idempotent(self.pool, self.store, key, fingerprint("POST", f"/orders/{order_id}/cancel", data), work)


def create_app() -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        setup_telemetry("order_service")
        pool = db.pool()
        app.state.api = OrderService(pool)
        yield
        pool.close()

    return order_routes("order-service", lifespan)


def main() -> None:
    serve(create_app())
