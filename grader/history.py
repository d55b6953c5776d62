"""The history: everything requested, acknowledged, injected and observed during a run.

Jepsen's model. A client operation is an `invoke` event, then exactly one completion with the same
`id`: `ok` (it took effect), `fail` (it must never take effect) or `info` (unknown: a timeout, a
cut, a 5xx after a possible side effect — it may take effect once, or not at all). Faults record
their start and end (grader/nemesis), and the grader's own reads of tables, topics and spans are
`observe` events. Checkers are pure functions of this log, so a saved history.jsonl can be judged
again without any server (`labkit recheck`).
"""
from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

COMPLETIONS = ("ok", "fail", "info")
KINDS = ("invoke", *COMPLETIONS, "fault", "observe", "span", "note")


@dataclass(frozen=True)
class Event:
    t: float  # seconds since the history started
    kind: str
    actor: str  # who did it: a workload client, the nemesis, a service, the grader
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Op:
    """One client operation, invoke and completion together."""

    id: int
    f: str  # what was asked: "place", "cancel", ...
    actor: str
    type: str  # ok | fail | info ("info" also for an operation that never completed)
    t_invoke: float
    t_complete: float | None
    invoke: dict[str, Any]  # what was sent
    result: dict[str, Any]  # what came back

    def get(self, name: str, default: Any = None) -> Any:
        """A field of the result, else of the invocation."""
        return self.result.get(name, self.invoke.get(name, default))


class History:
    """An append-only, thread-safe event log (workload threads and the nemesis record concurrently)."""

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self._op_ids = itertools.count(1)

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def record(self, kind: str, actor: str, **data: Any) -> Event:
        with self._lock:  # time taken under the lock, so event order and t agree
            event = Event(round(self.elapsed(), 4), kind, actor, data)
            self._events.append(event)
        return event

    # --- operations ------------------------------------------------------------------------
    def invoke(self, actor: str, f: str, **value: Any) -> int:
        with self._lock:
            op_id = next(self._op_ids)
        self.record("invoke", actor, id=op_id, f=f, **value)
        return op_id

    def complete(self, op_id: int, type: str, actor: str, f: str, **value: Any) -> Event:
        if type not in COMPLETIONS:
            raise ValueError(f"an operation completes as one of {COMPLETIONS}, not {type!r}")
        return self.record(type, actor, id=op_id, f=f, **value)

    def observe(self, what: str, **data: Any) -> Event:
        """The grader's own reading of some state (rows, records, lag, spans)."""
        return self.record("observe", "grader", what=what, **data)

    # --- reading ---------------------------------------------------------------------------
    def events(self, kind: str | None = None) -> list[Event]:
        with self._lock:
            return [e for e in self._events if kind is None or e.kind == kind]

    def ops(self, f: str | Iterable[str] | None = None) -> list[Op]:
        """Operations in invocation order; one never completed counts as `info`."""
        wanted = None if f is None else ({f} if isinstance(f, str) else set(f))
        invokes: dict[int, Event] = {}
        done: dict[int, Event] = {}
        for e in self.events():
            if e.kind == "invoke":
                invokes[e.data["id"]] = e
            elif e.kind in COMPLETIONS and "id" in e.data:
                done[e.data["id"]] = e
        ops = []
        for op_id, inv in invokes.items():
            if wanted is not None and inv.data.get("f") not in wanted:
                continue
            end = done.get(op_id)
            strip = ("id", "f")
            ops.append(Op(op_id, inv.data.get("f", ""), inv.actor, end.kind if end else "info", inv.t,
                          end.t if end else None, {k: v for k, v in inv.data.items() if k not in strip},
                          {k: v for k, v in (end.data if end else {}).items() if k not in strip}))
        return ops

    def observations(self, what: str) -> list[Event]:
        return [e for e in self.events("observe") if e.data.get("what") == what]

    def last_observation(self, what: str) -> dict[str, Any] | None:
        found = self.observations(what)
        return found[-1].data if found else None

    def __len__(self) -> int:
        return len(self._events)

    # --- files -----------------------------------------------------------------------------
    def dump_jsonl(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            for event in self.events():
                f.write(json.dumps(asdict(event), default=_plain) + "\n")

    @classmethod
    def load_jsonl(cls, path: str | Path) -> "History":
        history = cls()
        for line in Path(path).read_text().splitlines():
            if line.strip():
                d = json.loads(line)
                history._events.append(Event(d["t"], d["kind"], d["actor"], d.get("data", {})))
        ids = [e.data["id"] for e in history._events if e.kind == "invoke"]
        history._op_ids = itertools.count(max(ids, default=0) + 1)
        return history


def _plain(value: Any) -> Any:
    """JSON for what json does not know: bytes as text, tuples/sets as lists, the rest as str."""
    if isinstance(value, (bytes, bytearray)):
        return value.decode(errors="replace")
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return str(value)
