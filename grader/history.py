"""The history: everything requested, acknowledged, injected and observed during a run.

Checkers judge it; a failed check cites it. Written to history.jsonl so a run can be inspected.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Event:
    t: float  # seconds since the history started
    kind: str  # request | response | fault | observed | note
    actor: str
    data: dict[str, Any] = field(default_factory=dict)


class History:
    def __init__(self) -> None:
        self._events: list[Event] = []
        self._lock = threading.Lock()
        self._t0 = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def record(self, kind: str, actor: str, **data: Any) -> Event:
        with self._lock:
            event = Event(round(self.elapsed(), 4), kind, actor, data)
            self._events.append(event)
        return event

    def events(self, kind: str | None = None) -> list[Event]:
        with self._lock:
            return [e for e in self._events if kind is None or e.kind == kind]

    def dump_jsonl(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            for event in self.events():
                f.write(json.dumps(asdict(event), default=str) + "\n")

    @classmethod
    def load_jsonl(cls, path: Path) -> "History":
        history = cls()
        for line in Path(path).read_text().splitlines():
            if line.strip():
                d = json.loads(line)
                history._events.append(Event(d["t"], d["kind"], d["actor"], d.get("data", {})))
        return history
