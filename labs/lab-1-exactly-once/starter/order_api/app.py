"""Order API: your code for lab 1.

`make lab-1` runs it with traffic and a live view; `make check-1` grades it. The plumbing (HTTP
server, database pool, Kafka publisher, the registry of placed orders) comes from
services.common.orders.api; what is left here is the lesson. Read ../README.md first.
"""
from __future__ import annotations

import uuid

from fastapi.responses import JSONResponse

from services.common.http import ApiError, parse_body  # noqa: F401  (ApiError: for your 400/409/422)
from services.common.orders.api import CancelIn, OrderApiBase, OrderIn, serve_api


class OrderApi(OrderApiBase):
    # TODO(lab1-1): a table for idempotency keys, created at start-up, e.g.
    #   schema = "CREATE TABLE IF NOT EXISTS idempotency_keys (key text PRIMARY KEY, ...);"
    schema = ""

    def place(self, key: str | None, raw: bytes) -> JSONResponse:
        # TODO(lab1-1): every POST needs an Idempotency-Key header: answer 400 without it.
        # Before any side effect, claim the key in the database (one transaction, row lock):
        #   new key                                  -> remember a fingerprint of the request, go on
        #   same key, same request, finished         -> replay the stored status and body
        #   same key, different request              -> 422
        #   same key, first request still running    -> 409
        # When the work is done store its status and body; when it fails release the key, but keep
        # the order_id (and event_id) so that a retry publishes the very same event again.
        data, order = parse_body(raw, OrderIn)
        order_id = str(uuid.uuid4())
        event = self.event("OrderPlaced", order_id, order.customer_id, order.amount_cents)
        # TODO(lab1-2): send_nowait() returns before the broker has the event; if this process dies
        # now the order is gone, though the client was told 201. Use self.publish(event): it waits
        # for the broker's acknowledgement and answers 503 if none comes.
        self.publisher.send_nowait(event)
        with self.pool.connection() as conn:
            self.registry.add(conn, order_id, order.customer_id, order.amount_cents)
        return JSONResponse({"order_id": order_id, "customer_id": order.customer_id,
                             "amount_cents": order.amount_cents, "status": "placed"}, 201)

    def cancel(self, order_id: str, key: str | None, raw: bytes) -> JSONResponse:
        # TODO(lab1-1): the same Idempotency-Key handling as place().
        parse_body(raw, CancelIn, allow_empty=True)
        with self.pool.connection() as conn:
            known = self.registry.get(conn, order_id)
        if known is None:
            return JSONResponse({"error": "order_not_found", "detail": f"no order {order_id}"}, 404)
        customer_id, amount, status = known
        if status != "cancelled":
            self.publisher.send_nowait(self.event("OrderCancelled", order_id, customer_id, amount))  # TODO(lab1-2)
            with self.pool.connection() as conn:
                self.registry.mark_cancelled(conn, order_id)
        return JSONResponse({"order_id": order_id, "status": "cancelled"}, 200)


def main() -> None:
    serve_api(OrderApi)
