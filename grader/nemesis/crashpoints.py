"""Crash points without learner cooperation: SIGKILL a service just before or after a client call.

Every service of a graded run is started with crashsite/ first on PYTHONPATH (site_env); its
sitecustomize.py intercepts the client calls at the boundaries of a unit of work (input read,
effect made durable, input acknowledged), records their sequence, and reads the grader's arms
from a control file at each interception: arming needs no restart. When an arm fires, the site
writes it into its state file (so the grader knows the crash was the planned one) and kills its
own process with SIGKILL (before or after the call), or - when="hold" - blocks the calling thread
for good while the process's other threads run on; the grader SIGKILLs it later (HoldThenKill).
An arm names a unit position ("db-commit#2": the 2nd commit of a unit of work, see
grader/nemesis/boundaries.py) or a point and a count ("the 3rd db-commit from now").

What each point counts (calls since it was armed; crash_env's arm: since the process started):
- consumer-ack: confluent_kafka Consumer.commit and Consumer.store_offsets, together (whichever the
  service uses), also on DeserializingConsumer and the asyncio AIOConsumer. "after" an asynchronous
  commit (the default!) or a store_offsets means the request was queued, not that the broker has it.
- producer-flush / producer-produce: Producer.flush / Producer.produce (also SerializingProducer).
  "after" produce means queued in the client, not delivered. AIOProducer's batched sends are not counted.
- db-commit: psycopg 3 Connection.commit() with a transaction open - which is also what
  `with psycopg.connect(...) as conn` and `with pool.connection() as conn` do on exit - and leaving an
  outermost `with conn.transaction():` block without an error; the same for AsyncConnection.
  Not counted: a literal `conn.execute("COMMIT")`, psycopg2, SQLAlchemy sessions on other drivers.
- amqp-ack: pika BlockingChannel.basic_ack, basic_nack and basic_reject. "after" waits for a synchronous no-op on the channel
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
import threading
from pathlib import Path

CRASHSITE = Path(__file__).resolve().parent / "crashsite"
POINTS = ("consumer-ack", "producer-flush", "producer-produce", "db-commit", "amqp-ack", "slot-advance")
WHENS = ("before", "after", "hold", "stall")
# The boundaries of a unit of work the crash site records (see crashsite/sitecustomize.py).
READS = ("poll", "slot-read", "amqp-delivery")
EFFECTS = ("db-commit", "producer-produce", "producer-flush", "redis-write", "amqp-publish", "http-call")
ACKS = ("consumer-ack", "slot-advance", "amqp-ack")


def crash_env(point: str, when: str, nth: int, marker: str | Path) -> dict[str, str]:
    """Env entries for one process armed for its whole life (no grader around it: tests, tools):
    crash at its `nth` `point` call, `when` before/after it, or hold there (block the calling
    thread before the call, for the grader to kill). A graded run arms live instead (site_env).

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


def site_env(control: Path, state: Path) -> dict[str, str]:
    """Env entries that install the crash site in every life of a service, armed live: it reads its
    arms from `control` at each interception and writes what it saw and fired to `state`."""
    path = os.pathsep.join(p for p in (str(CRASHSITE), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, "LABKIT_CRASH_CONTROL": str(control), "LABKIT_CRASH_MARKER": str(state)}


def crash_reached(marker: str | Path, arm: int | None = None) -> dict | None:
    """What the process wrote at its crash point ({point, when, nth, pid, thread, time, ...}), or
    None if it never reached it (it is still running, or died some other way). With `arm`: the
    entry of that live arm (its id) only."""
    state = read_state(marker)
    if state is None:
        return None
    if arm is not None:
        return (state.get("fired") or {}).get(str(arm))
    return state if "when" in state else None


def read_state(marker: str | Path) -> dict | None:
    """The crash site's state file: {pid, units, fresh_units, sequences: {text: count}, fired: {...}}."""
    try:
        state = json.loads(Path(marker).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


class Arms:
    """The live arms of one service, as the crash site reads them from its control file. Written
    whole and renamed (a new inode: the site re-reads it), world-readable (a sandboxed service
    reads it through a read-only bind)."""

    def __init__(self, control: Path) -> None:
        self.control = control
        self._arms: dict[int, dict] = {}
        self._lock = threading.Lock()
        self._write()

    def arm(self, fid: int, **spec) -> None:
        with self._lock:
            self._arms[fid] = {"id": fid, **spec}
            self._write()

    def disarm(self, fid: int) -> None:
        with self._lock:
            if self._arms.pop(fid, None) is not None:
                self._write()

    def _write(self) -> None:
        self.control.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.control.parent, 0o755)
        tmp = self.control.with_name(self.control.name + ".tmp")
        tmp.write_text(json.dumps({"arms": list(self._arms.values())}))
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.control)
