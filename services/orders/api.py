"""What the order API needs besides the lesson: request model and the orders it has placed."""
from __future__ import annotations

import psycopg
from pydantic import BaseModel, ConfigDict, Field

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


class CancelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OrderRegistry:
    """The orders this API placed, so a cancel of an unknown id is a 404, not an event."""

    def create_schema(self, conn: psycopg.Connection) -> None:
        conn.execute(REGISTRY_SCHEMA)

    def add(self, conn: psycopg.Connection, order_id: str, customer_id: str, amount_cents: int) -> None:
        conn.execute("""INSERT INTO order_api_orders VALUES (%s, %s, %s, 'placed')
                        ON CONFLICT (order_id) DO NOTHING""", (order_id, customer_id, amount_cents))

    def get(self, conn: psycopg.Connection, order_id: str) -> tuple[str, int, str] | None:
        return conn.execute("SELECT customer_id, amount_cents, status FROM order_api_orders WHERE order_id = %s",
                            (order_id,)).fetchone()

    def mark_cancelled(self, conn: psycopg.Connection, order_id: str) -> None:
        conn.execute("UPDATE order_api_orders SET status = 'cancelled' WHERE order_id = %s", (order_id,))
