"""Crash points without learner cooperation: SIGKILL a service just before or after its Nth call.

The service is started with crashsite/ first on PYTHONPATH; its sitecustomize.py wraps the client
call named by LABKIT_CRASH=<point>:<when>:<nth> and, when the Nth call comes, writes a marker file
(so the grader knows the crash was the planned one) and kills its own process with SIGKILL.

Points: consumer-ack (confluent_kafka Consumer.commit and Consumer.store_offsets), producer-flush,
producer-produce, db-commit (psycopg Connection.commit, an outermost `with conn.transaction()`, and
`with psycopg.connect() as conn` exit), amqp-ack (pika BlockingChannel.basic_ack).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

CRASHSITE = Path(__file__).resolve().parent / "crashsite"
POINTS = ("consumer-ack", "producer-flush", "producer-produce", "db-commit", "amqp-ack")


def crash_env(point: str, when: str, nth: int, marker: str | Path) -> dict[str, str]:
    if point not in POINTS:
        raise ValueError(f"unknown crash point {point!r}; known: {', '.join(POINTS)}")
    if when not in ("before", "after") or nth < 1:
        raise ValueError("when is 'before' or 'after', nth counts from 1")
    Path(marker).unlink(missing_ok=True)
    path = os.pathsep.join(p for p in (str(CRASHSITE), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, "LABKIT_CRASH": f"{point}:{when}:{nth}", "LABKIT_CRASH_MARKER": str(marker)}


def crash_reached(marker: str | Path) -> dict | None:
    """What the crashed process wrote before dying, or None if it died some other way."""
    try:
        return json.loads(Path(marker).read_text())
    except (OSError, ValueError):
        return None
