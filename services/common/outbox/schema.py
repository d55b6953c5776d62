"""Lab 2's source of truth: the order service's tables, the outbox, and its replication slot.

The outbox follows the conventions of Debezium's outbox event router, so the same table works
with Debezium: `id` (the event id consumers dedupe by), `aggregatetype` (routes to the topic
`<ns>.outbox.event.<aggregatetype>`), `aggregateid` (the Kafka key: one aggregate, one partition),
`type`, `payload` (the record's value), plus `traceparent` so the trace survives the hop through
the database. Rows are only ever inserted.
"""
from __future__ import annotations

import os
import re

import psycopg

from services.common.idempotency import SCHEMA as IDEMPOTENCY_SCHEMA

SCHEMA = IDEMPOTENCY_SCHEMA + """
CREATE TABLE IF NOT EXISTS orders (
    order_id     text PRIMARY KEY,
    customer_id  text NOT NULL,
    amount_cents bigint NOT NULL,
    status       text NOT NULL,            -- 'placed' | 'cancelled'
    version      int NOT NULL,             -- 1 when placed, +1 per change: consumers must never go back
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS outbox (
    id            uuid PRIMARY KEY,
    aggregatetype text NOT NULL,
    aggregateid   text NOT NULL,
    type          text NOT NULL,
    payload       jsonb NOT NULL,
    traceparent   text,
    -- Allocation order, NOT commit order: only a relay that polls the table uses it (and misses
    -- rows by it, see the README). Log-based CDC reads commit order from the WAL instead.
    seq           bigint GENERATED ALWAYS AS IDENTITY,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""


def create_schema(conn: psycopg.Connection) -> None:
    """The tables, once, whoever starts first (the order service and the relay both call this)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('outbox-schema'))")
        conn.execute(SCHEMA)


def _identifier(text: str) -> str:
    """A valid unquoted PostgreSQL name (slot names allow only [a-z0-9_], at most 63 characters)."""
    return re.sub(r"[^a-z0-9_]", "_", text.lower())[:63]


def slot_name() -> str:
    """Replication slots are per database but their names are cluster-wide: include the namespace."""
    ns = os.environ.get("LAB_NAMESPACE", "")
    return _identifier(f"{ns}_outbox_relay" if ns else "outbox_relay")


def publication_name() -> str:
    ns = os.environ.get("LAB_NAMESPACE", "")
    return _identifier(f"{ns}_outbox" if ns else "outbox")


def ensure_replication(conn: psycopg.Connection) -> tuple[str, str]:
    """Create the publication (the outbox's inserts only) and the logical replication slot, if
    missing; safe when several processes race. Returns (slot, publication).

    The slot must exist BEFORE the first order is written: decoding starts where the slot was
    created, so rows committed earlier would never reach the relay. That is why the order service
    calls this at start-up too, not only the relay. `conn` must be in autocommit mode: a slot
    cannot be created in a transaction that has written anything.
    """
    slot, publication = slot_name(), publication_name()
    if not conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,)).fetchone():
        try:
            conn.execute(f"CREATE PUBLICATION {publication} FOR TABLE outbox WITH (publish = 'insert')")
        except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
            pass  # another process was quicker
    if not conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone():
        try:
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
            pass
    return slot, publication
