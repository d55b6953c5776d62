"""Events a check's bug needs, read from the history (grader.scenario.Check `events`).

A fault that bit proves nothing if what it could expose was not going on: a broker cut while no
cancel was in flight says nothing about cancels. Each function here makes one such event: called
with the history, it returns None if the event happened to this submission, else the reason (the
check is then SKIP with 0 points, never a vacuous PASS). Pure functions of the history, like checks.
"""
from __future__ import annotations

from typing import Callable

from ..history import History, Op
from ..nemesis import fault_events

Event = Callable[[History], "str | None"]


def _windows(history: History, kinds: tuple[str, ...], target: str | None) -> list[dict]:
    return [f for f in fault_events(history) if f["effective"] and f["fault"] in kinds
            and (target is None or f["target"] == target) and f["start"] is not None and f["end"] is not None]


def _in_flight(op: Op, start: float, end: float) -> bool:
    """Sent before the fault ended and not answered before it began."""
    return op.t_invoke <= end and (op.t_complete is None or op.t_complete >= start)


def in_flight_during(f: str, kinds: tuple[str, ...], target: str | None, what: str) -> Event:
    """An operation `f` (e.g. a cancel) was in flight while one of these faults was under way."""
    def event(history: History) -> str | None:
        windows = _windows(history, kinds, target)
        if any(_in_flight(op, w["start"], w["end"]) for op in history.ops(f) for w in windows):
            return None
        faults = " or ".join(kinds) + (f" of {target}" if target else "")
        return f"no {what} was in flight during a {faults} ({len(windows)} such fault(s) bit)"
    return event


def acknowledged_during(f: str, kind: str, target: str | None, before_end: float, what: str) -> Event:
    """An operation `f` was acknowledged while the fault was under way, at least `before_end` seconds
    before it ended (e.g. orders the relay had to send into a broker cut that outlasted a delivery
    timeout: their sends could only fail)."""
    def event(history: History) -> str | None:
        windows = _windows(history, (kind,), target)
        if any(op.type == "ok" and op.t_complete is not None and w["start"] <= op.t_complete <= w["end"] - before_end
               for op in history.ops(f) for w in windows):
            return None
        on = f" of {target}" if target else ""
        return (f"no {what} was acknowledged during a {kind}{on} at least {before_end:g} s before it ended "
                f"({len(windows)} such fault(s) bit)")
    return event


def held(kind: str, target: str) -> Event:
    """A hold-then-kill really held the service at its point (not a fallback kill)."""
    def event(history: History) -> str | None:
        found = [f for f in fault_events(history) if f["fault"] == kind and f["target"] == target]
        if any((f.get("detail") or {}).get("how") == "hold-then-kill" for f in found):
            return None
        hows = ", ".join(str((f.get("detail") or {}).get("how") or "not effective") for f in found) or "never injected"
        return f"{target} was never held at its point ({kind}: {hows})"
    return event


def retried_unknown_answered(history: History) -> str | None:
    """A key whose first request got no answer (unknown outcome) was sent again and answered."""
    from .contract import retried_after_unknown

    if any(not first.invoke.get("probe") for first, _ in retried_after_unknown(history).values()):
        return None  # (a probe's retry, e.g. of an order the database refuses, cannot have taken effect)
    unknown = sum(1 for op in history.ops("place") if op.type == "info" and not op.invoke.get("probe"))
    return f"no request whose outcome was unknown was sent again and answered ({unknown} unknown outcome(s))"
