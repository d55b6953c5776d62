"""Order events on the wire: JSON values keyed by order id, event id and type also in headers."""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from typing import Any

TYPES = ("OrderPlaced", "OrderCancelled")
FIELDS = ("event_id", "type", "order_id", "customer_id", "amount_cents", "occurred_at")


class BadEvent(ValueError):
    """A record that is not a valid order event; the reason goes into the DLQ's `error` header."""


def make_event(type_: str, order_id: str, customer_id: str, amount_cents: int, event_id: str | None = None) -> dict:
    return {"event_id": event_id or str(uuid.uuid4()), "type": type_, "order_id": order_id,
            "customer_id": customer_id, "amount_cents": amount_cents,
            "occurred_at": datetime.now(timezone.utc).isoformat()}


def encode(event: dict) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) for producing `event`."""
    headers = [("event_id", event["event_id"].encode()), ("type", event["type"].encode())]
    return event["order_id"].encode(), json.dumps(event).encode(), headers


def parse_event(value: bytes | None) -> dict[str, Any]:
    if value is None:
        raise BadEvent("empty record (no value)")
    try:
        event = json.loads(value)
    except ValueError as e:
        raise BadEvent(f"value is not JSON: {e}") from None
    if not isinstance(event, dict):
        raise BadEvent("value is not a JSON object")
    missing = [f for f in FIELDS if f not in event]
    if missing:
        raise BadEvent(f"missing fields: {', '.join(missing)}")
    if event["type"] not in TYPES:
        raise BadEvent(f"unknown event type {event['type']!r}")
    if not isinstance(event["amount_cents"], int):
        raise BadEvent("amount_cents is not an integer")
    return event
