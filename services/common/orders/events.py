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


def storable_text(value: Any) -> bool:
    """A non-empty str without NUL or lone surrogates (JSON allows both, PostgreSQL text neither)."""
    if not isinstance(value, str) or not value or "\x00" in value:
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


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
    for name in ("event_id", "order_id", "customer_id", "occurred_at"):
        if not storable_text(event[name]):
            raise BadEvent(f"{name} is not a non-empty string PostgreSQL can store")
    amount = event["amount_cents"]
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 <= amount < 2**63:
        raise BadEvent("amount_cents is not a non-negative 64-bit integer")
    return event
