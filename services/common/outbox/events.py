"""Outbox events: the rows the order service writes and the Kafka records the relay makes of them.

Record = Debezium's outbox event router: topic `<ns>.outbox.event.<aggregatetype>`, key =
`aggregateid`, value = `payload` (JSON), headers `id` (the outbox row's id), `type`, and
`traceparent` (the W3C trace context the row carried).
"""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import psycopg
from opentelemetry import propagate

from services.common.config import namespaced
from services.common.orders.events import BadEvent, parse_event

ORDER = "order"  # the aggregate type of every event in lab 2


def topic_for(aggregatetype: str) -> str:
    return namespaced(f"outbox.event.{aggregatetype}")


def order_payload(order_id: str, customer_id: str, amount_cents: int, status: str, version: int) -> dict:
    return {"order_id": order_id, "customer_id": customer_id, "amount_cents": amount_cents, "status": status,
            "version": version, "occurred_at": datetime.now(timezone.utc).isoformat()}


def current_traceparent() -> str | None:
    """The active span's W3C traceparent (None when tracing is off)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def append(conn: psycopg.Connection, event_id: str, aggregatetype: str, aggregateid: str, type_: str,
           payload: dict, traceparent: str | None) -> None:
    """Insert one outbox row in the caller's transaction (it commits with the caller's changes)."""
    conn.execute("""INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, traceparent)
                    VALUES (%s, %s, %s, %s, %s, %s)""",
                 (event_id, aggregatetype, aggregateid, type_, json.dumps(payload), traceparent))


def parse_record(key: bytes | None, value: bytes | None, headers: list | None) -> dict:
    """An order event from a routed outbox record, in lab 1's event shape plus `version`;
    BadEvent (with the reason) for anything else."""
    found = {k: v.decode(errors="replace") for k, v in headers or [] if v is not None}
    event_id = found.get("id")
    try:
        uuid.UUID(event_id or "")
    except ValueError:
        raise BadEvent("header 'id' is missing or not a uuid") from None
    try:
        payload = json.loads(value) if value is not None else None
    except ValueError as e:
        raise BadEvent(f"value is not JSON: {e}") from None
    if not isinstance(payload, dict):
        raise BadEvent("value is not a JSON object")
    version = payload.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise BadEvent("version is not a positive integer")
    event = parse_event(json.dumps({**payload, "event_id": event_id, "type": found.get("type")}).encode())
    if key is None or key.decode(errors="replace") != event["order_id"]:
        raise BadEvent("the record key is not the payload's order_id")
    return {**event, "version": version}
