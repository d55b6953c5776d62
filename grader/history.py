"""The history: everything requested, acknowledged, injected and observed during a run.

Checkers judge it; a failed check cites it. Written to history.jsonl (one event per line, in the
order recorded) so a run can be inspected and replayed by eye.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("request", "response", "fault", "observed", "note")  # what runners record; others are allowed


@dataclass(frozen=True)
class Event:
    t: float  # seconds since the history started
    kind: str
    actor: str  # who did it: a workload client, the nemesis, a service, the grader
    data: dict[str, Any] = field(default_factory=dict)


class History:
    """An append-only, thread-safe event log (workload threads and the nemesis record concurrently)."""

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._lock = threading.Lock()
        self._t0 = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def record(self, kind: str, actor: str, **data: Any) -> Event:
        with self._lock:  # time taken under the lock, so event order and t agree
            event = Event(round(self.elapsed(), 4), kind, actor, data)
            self._events.append(event)
        return event

    def events(self, kind: str | None = None) -> list[Event]:
        with self._lock:
            return [e for e in self._events if kind is None or e.kind == kind]

    def __len__(self) -> int:
        return len(self._events)

    def dump_jsonl(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            for event in self.events():
                f.write(json.dumps(asdict(event), default=str) + "\n")  # default=str: bytes, Paths, ...

    @classmethod
    def load_jsonl(cls, path: str | Path) -> "History":
        history = cls()
        for line in Path(path).read_text().splitlines():
            if line.strip():
                d = json.loads(line)
                history._events.append(Event(d["t"], d["kind"], d["actor"], d.get("data", {})))
        return history
