"""Crash points without learner cooperation: SIGKILL a service just before or after its Nth call.

The service is started with crashsite/ first on PYTHONPATH; its sitecustomize.py wraps the client
call named by LABKIT_CRASH=<point>:<when>:<nth> and, when the Nth call comes, writes a marker file
(so the grader knows the crash was the planned one) and kills its own process with SIGKILL.
when="hold": at the Nth call, before it, the marker is written and the calling thread blocks for
good while the process's other threads run on; the grader SIGKILLs it later (HoldThenKill).

What each point counts (calls in one process; a restarted process counts from 1 again):
- consumer-ack: confluent_kafka Consumer.commit and Consumer.store_offsets, together (whichever the
  service uses), also on DeserializingConsumer and the asyncio AIOConsumer. "after" an asynchronous
  commit (the default!) or a store_offsets means the request was queued, not that the broker has it.
- producer-flush / producer-produce: Producer.flush / Producer.produce (also SerializingProducer).
  "after" produce means queued in the client, not delivered. AIOProducer's batched sends are not counted.
- db-commit: psycopg 3 Connection.commit() with a transaction open - which is also what
  `with psycopg.connect(...) as conn` and `with pool.connection() as conn` do on exit - and leaving an
  outermost `with conn.transaction():` block without an error; the same for AsyncConnection.
  Not counted: a literal `conn.execute("COMMIT")`, psycopg2, SQLAlchemy sessions on other drivers.
- amqp-ack: pika BlockingChannel.basic_ack. "after" waits for a synchronous no-op on the channel
  first, so the broker has processed the ack before the process dies.
- slot-advance: a psycopg 3 cursor execute (also Connection.execute; sync and async) whose SQL
  mentions pg_replication_slot_advance. "after" means the statement ran; in autocommit the slot
  moved, inside a transaction it moves at that transaction's commit. Also a psycopg2 streaming
  ReplicationCursor.send_feedback with a flush_lsn ("after": sent, perhaps not yet received).

The hook is skipped by interpreters started with -I or -S, and by one that finds another
sitecustomize earlier on its path (then put crash_env's PYTHONPATH first).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

CRASHSITE = Path(__file__).resolve().parent / "crashsite"
POINTS = ("consumer-ack", "producer-flush", "producer-produce", "db-commit", "amqp-ack", "slot-advance")
WHENS = ("before", "after", "hold", "stall")


def crash_env(point: str, when: str, nth: int, marker: str | Path) -> dict[str, str]:
    """Env entries for the service's next life: crash at its `nth` `point` call, `when` before/after
    it, or hold there (block the calling thread before the call, for the grader to kill).

    Keeps the grader's own PYTHONPATH after the crash site; removes a stale marker.
    """
    if point not in POINTS:
        raise ValueError(f"unknown crash point {point!r}; known: {', '.join(POINTS)}")
    if when not in WHENS or nth < 1:
        raise ValueError(f"when is one of {', '.join(WHENS)}; nth counts from 1")
    marker = Path(marker).resolve()  # the service runs in another working directory
    marker.unlink(missing_ok=True)
    path = os.pathsep.join(p for p in (str(CRASHSITE), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, "LABKIT_CRASH": f"{point}:{when}:{nth}", "LABKIT_CRASH_MARKER": str(marker)}


def crash_reached(marker: str | Path) -> dict | None:
    """What the process wrote at its crash point ({point, when, nth, pid, thread, time}), or None if
    it never reached it (it is still running, or died some other way)."""
    try:
        return json.loads(Path(marker).read_text())
    except (OSError, ValueError):
        return None
