"""A run's timeline from its history: operations with their latency and outcome, and fault windows.

Reads both history shapes:
- Jepsen-style: `invoke` then `ok` | `fail` | `info` with the same `id`; faults with `phase`
  "start" / "end" (paired by `fid`, else by fault and target) and "unavailable" (never injected).
- the first shape: `request` then `response` with the same actor and `n` (2xx = ok, 4xx = fail,
  no answer or 5xx = info); faults as single events, "cut" ... "heal" forming a window.
Events may be `grader.history.Event`s or the dicts of history.jsonl.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

COMPLETIONS = ("ok", "fail", "info")
HEALS = {"heal": "cut", "resume": "pause", "unpause": "pause", "restore": "cut"}  # first shape: end -> start


@dataclass(frozen=True)
class TimedOp:
    start: float
    end: float | None  # None: never completed (counts as info)
    outcome: str  # ok | fail | info
    name: str  # what was asked ("place", "cancel", ...)
    key: str | None = None  # an idempotency key or id a check's evidence may cite

    @property
    def latency(self) -> float | None:
        return None if self.end is None else max(0.0, self.end - self.start)


@dataclass(frozen=True)
class FaultWindow:
    name: str
    target: str
    start: float
    end: float | None  # None: a point in time (a kill, an injection), or never healed

    @property
    def label(self) -> str:
        return f"{self.name} {self.target}".strip()


@dataclass
class Timeline:
    ops: list[TimedOp] = field(default_factory=list)
    faults: list[FaultWindow] = field(default_factory=list)
    unavailable: list[str] = field(default_factory=list)  # faults this run could not inject, and why
    marks: list[tuple[float, str]] = field(default_factory=list)  # explicit violation events, if recorded

    @property
    def duration(self) -> float:
        ends = [o.end or o.start for o in self.ops] + [f.end or f.start for f in self.faults] + [t for t, _ in self.marks]
        return max(ends, default=0.0)


def _fields(event: Any) -> tuple[float, str, str, dict]:
    if isinstance(event, dict):
        return float(event.get("t", 0)), event.get("kind", ""), event.get("actor", ""), event.get("data") or {}
    return float(event.t), event.kind, event.actor, dict(event.data or {})


def _key(data: dict) -> str | None:
    for name in ("key", "order_id", "value"):
        value = data.get(name)
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return str(value)
    return None


def _http_outcome(status: int | None) -> str:
    if status and 200 <= status < 300:
        return "ok"
    if status and 400 <= status < 500:
        return "fail"  # a definite refusal: it must never take effect
    return "info"  # no answer or a 5xx: it may have taken effect


def build(events: Iterable[Any]) -> Timeline:
    tl = Timeline()
    invokes: dict[Any, tuple[float, dict]] = {}
    requests: dict[tuple[str, Any], tuple[float, dict]] = {}
    open_faults: dict[Any, tuple[float, str, str]] = {}
    for event in events:
        t, kind, actor, data = _fields(event)
        if kind == "invoke":
            invokes[data.get("id")] = (t, data)
        elif kind in COMPLETIONS and "id" in data:
            started = invokes.pop(data["id"], None)
            if started:
                t0, inv = started
                tl.ops.append(TimedOp(t0, t, kind, str(inv.get("f", data.get("f", ""))), _key(inv) or _key(data)))
        elif kind == "request":
            requests[(actor, data.get("n"))] = (t, data)
        elif kind == "response":
            started = requests.pop((actor, data.get("n")), None)
            if started:
                t0, req = started
                tl.ops.append(TimedOp(t0, t, _http_outcome(data.get("status")), str(req.get("op", "")),
                                      _key(req) or _key(data)))
        elif kind == "fault":
            _fault(tl, open_faults, t, data)
        elif kind == "violation":
            tl.marks.append((t, str(data.get("check") or data.get("message") or "violation")))
    for t0, inv in invokes.values():  # never completed: outcome unknown
        tl.ops.append(TimedOp(t0, None, "info", str(inv.get("f", "")), _key(inv)))
    for t0, req in requests.values():
        tl.ops.append(TimedOp(t0, None, "info", str(req.get("op", "")), _key(req)))
    for t0, name, target in open_faults.values():  # started and never healed: until the end of the run
        tl.faults.append(FaultWindow(name, target, t0, tl.duration or t0))
    tl.ops.sort(key=lambda o: o.start)
    tl.faults.sort(key=lambda f: f.start)
    return tl


def _fault(tl: Timeline, open_faults: dict, t: float, data: dict) -> None:
    name, target, phase = str(data.get("fault", data.get("name", "fault"))), str(data.get("target", "")), data.get("phase")
    if phase == "unavailable":
        tl.unavailable.append(f"{name} {target}: {data.get('reason', '')}".strip())
    elif phase == "start":
        open_faults[data.get("fid", (name, target))] = (t, name, target)
    elif phase == "end":
        started = open_faults.pop(data.get("fid", (name, target)), None)
        t0 = started[0] if started else t
        tl.faults.append(FaultWindow(name, target, t0, t if t > t0 else None))
    elif name in HEALS:  # first shape: a heal closes the window its fault opened
        started = open_faults.pop((HEALS[name], target), None)
        if started:
            tl.faults.append(FaultWindow(started[1], target, started[0], t))
    elif name in HEALS.values():
        open_faults[(name, target)] = (t, name, target)
    else:
        tl.faults.append(FaultWindow(name, target, t, None))


def load(path: str | Path) -> Timeline:
    """From a history.jsonl; an empty timeline when the file is missing or unreadable lines are met."""
    path = Path(path)
    if not path.exists():
        return Timeline()
    events = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return build(events)


def throughput(tl: Timeline, bucket: float = 1.0) -> tuple[list[float], dict[str, list[int]]]:
    """Completions per second per outcome, in `bucket`-second bins (x = bin start)."""
    n = int(tl.duration // bucket) + 1 if tl.ops else 0
    counts = {outcome: [0] * n for outcome in COMPLETIONS}
    for op in tl.ops:
        at = op.end if op.end is not None else op.start
        counts[op.outcome][min(n - 1, int(at // bucket))] += 1
    scale = 1.0 / bucket
    return [i * bucket for i in range(n)], {k: [c * scale for c in v] for k, v in counts.items()}


def label_lanes(starts: Iterable[float], min_gap: float) -> list[int]:
    """A lane (0, 1, 2, ...) per fault label so that labels closer than `min_gap` on the time axis
    never share one: each label takes the lowest lane whose last label is far enough to its left."""
    last: list[float] = []  # per lane, the time of its rightmost label
    lanes = []
    for start in starts:
        lane = next((i for i, t in enumerate(last) if start - t >= min_gap), len(last))
        if lane == len(last):
            last.append(start)
        last[lane] = start
        lanes.append(lane)
    return lanes


def cited(tl: Timeline, evidence: Iterable[str]) -> list[TimedOp]:
    """Operations whose key a failing check's evidence names: the violations to mark."""
    text = "\n".join(evidence)
    return [op for op in tl.ops if op.key and len(op.key) >= 6 and op.key in text]
