"""The read model's tables (the grader's contract) and how one event changes them."""
from __future__ import annotations

import psycopg

from services.common.log import get_logger

log = get_logger("read_model")

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    order_id     text PRIMARY KEY,
    customer_id  text NOT NULL,
    amount_cents bigint NOT NULL,
    status       text NOT NULL,            -- 'placed' | 'cancelled'
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS customer_totals (
    customer_id  text PRIMARY KEY,
    order_count  int NOT NULL DEFAULT 0,     -- placed, not cancelled
    total_cents  bigint NOT NULL DEFAULT 0
);
"""


def create_schema(conn: psycopg.Connection, extra: str = "") -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('read-model-schema'))")  # concurrent starters
        conn.execute(SCHEMA + extra)


def _add_to_totals(conn: psycopg.Connection, customer: str, count: int, cents: int) -> None:
    conn.execute(
        """INSERT INTO customer_totals (customer_id, order_count, total_cents) VALUES (%s, %s, %s)
           ON CONFLICT (customer_id) DO UPDATE SET order_count = customer_totals.order_count + EXCLUDED.order_count,
                                                   total_cents = customer_totals.total_cents + EXCLUDED.total_cents""",
        (customer, count, cents))


def apply_event(conn: psycopg.Connection, event: dict) -> None:
    """Apply one event inside the caller's transaction.

    Deliberately NOT idempotent, like most real effects: a second OrderPlaced for a placed order
    counts it again. Applying each event once is the consumer's job (the inbox).
    A cancel for an order not seen yet leaves a tombstone (status 'cancelled', amount 0), so an
    OrderPlaced arriving after it cannot bring the order back.
    """
    order_id, customer, amount = event["order_id"], event["customer_id"], event["amount_cents"]
    if event["type"] == "OrderPlaced":
        conn.execute("""INSERT INTO orders (order_id, customer_id, amount_cents, status) VALUES (%s, %s, %s, 'placed')
                        ON CONFLICT (order_id) DO NOTHING""", (order_id, customer, amount))
        status = conn.execute("SELECT status FROM orders WHERE order_id = %s", (order_id,)).fetchone()[0]
        if status == "placed":
            _add_to_totals(conn, customer, 1, amount)
    else:  # OrderCancelled
        row = conn.execute("SELECT status, customer_id, amount_cents FROM orders WHERE order_id = %s FOR UPDATE",
                           (order_id,)).fetchone()
        if row is None:
            log.info("cancel for unknown order %s: recorded as cancelled (a tombstone)", order_id)
            conn.execute("""INSERT INTO orders (order_id, customer_id, amount_cents, status)
                            VALUES (%s, %s, 0, 'cancelled')""", (order_id, customer))
        elif row[0] == "placed":
            conn.execute("UPDATE orders SET status = 'cancelled', updated_at = now() WHERE order_id = %s", (order_id,))
            _add_to_totals(conn, row[1], -1, -row[2])
