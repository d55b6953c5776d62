"""Order API (reference): idempotent by key, answering only after the broker acknowledged."""
from __future__ import annotations

from typing import Any, Callable

from fastapi.responses import JSONResponse, Response

from services.common.http import parse_body
from services.common.idempotency import SCHEMA, Claim, IdempotencyStore, fingerprint, idempotent, require_key
from services.common.orders.api import CancelIn, OrderApiBase, OrderIn, serve_api


class OrderApi(OrderApiBase):
    schema = SCHEMA
    store = IdempotencyStore()

    def require_key(self, key: str | None) -> str:
        return require_key(key)

    def idempotent(self, key: str, fp: str, work: Callable[[Claim], tuple[int, Any]]) -> Response:
        """Claim the key, do the work once, store its response; replay it for retries."""
        return idempotent(self.pool, self.store, key, fp, work)

    def place(self, key: str | None, raw: bytes) -> JSONResponse:
        key = self.require_key(key)
        data, order = parse_body(raw, OrderIn)  # invalid input is rejected before the key is claimed

        def work(claim: Claim) -> tuple[int, Any]:
            self.publish(self.event("OrderPlaced", claim.resource_id, order.customer_id, order.amount_cents,
                                    event_id=claim.event_id))
            with self.pool.connection() as conn:
                self.registry.add(conn, claim.resource_id, order.customer_id, order.amount_cents)
            return 201, {"order_id": claim.resource_id, "customer_id": order.customer_id,
                         "amount_cents": order.amount_cents, "status": "placed"}

        return self.idempotent(key, fingerprint("POST", "/orders", data), work)

    def cancel(self, order_id: str, key: str | None, raw: bytes) -> JSONResponse:
        key = self.require_key(key)
        data, _ = parse_body(raw, CancelIn, allow_empty=True)

        def work(claim: Claim) -> tuple[int, Any]:
            with self.pool.connection() as conn:
                known = self.registry.get(conn, order_id)
            if known is None:
                return 404, {"error": "order_not_found", "detail": f"no order {order_id}"}
            customer_id, amount, status = known
            if status != "cancelled":
                self.publish(self.event("OrderCancelled", order_id, customer_id, amount, event_id=claim.event_id))
                with self.pool.connection() as conn:
                    self.registry.mark_cancelled(conn, order_id)
            return 200, {"order_id": order_id, "status": "cancelled"}

        return self.idempotent(key, fingerprint("POST", f"/orders/{order_id}/cancel", data), work)


def main() -> None:
    serve_api(OrderApi)
