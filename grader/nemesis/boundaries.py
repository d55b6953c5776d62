"""Systematic crash coverage: kill a service just after each boundary of its unit of work, and hold
it before each effect, as the submission actually has them (FATE/DESTINI's failure IDs, per unit).

The crash site (crashsite/sitecustomize.py) records, per service life, the sequence of boundary
calls of each unit of work - input read, effects made durable, input acknowledged - e.g.
"poll -> db-commit#1 -> db-commit#2 -> consumer-ack#1". BoundarySweep reads what a warm-up showed,
and then, one after another and each on fresh work (the restarted service applying records again),
arms a crash just after each distinct position and a hold just before each effect, counted
relative to the unit of work. A submission that adds a boundary (a second transaction, an early
ack) thus gets a kill between its two halves in every run.

Coverage ("read_model: 3 of 3 boundaries killed after, 2 held before") goes into the history (the
sweep's end event), and from there into every report; `coverage_gaps` names the positions a check
relying on the sweep would need and did not get.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

from .base import Fault, Need, Target, fault_events
from .crashpoints import EFFECTS, READS, read_state
from .process import HEALTHY_WITHIN, CrashPoint, HoldThenKill

if TYPE_CHECKING:
    from ..history import History

MIN_SEEN = 2  # a position must show in this many units to be swept (one overlap of two units is noise)


def positions_of(lives: list[dict], min_seen: int = MIN_SEEN) -> tuple[list[str], dict[str, int]]:
    """The distinct boundary positions in the sequences the crash site recorded, in unit order (the
    most frequent sequence first), and all sequences seen with their counts."""
    sequences: dict[str, int] = {}
    for life in lives:
        for text, count in (life.get("sequences") or {}).items():
            if isinstance(text, str) and isinstance(count, int):
                sequences[text[:500]] = sequences.get(text[:500], 0) + count
    seen: dict[str, int] = {}
    order: list[str] = []
    for text, count in sorted(sequences.items(), key=lambda kv: -kv[1]):
        for part in text.split(" -> ")[1:]:
            pos = part.rstrip(".")
            if pos.split("#")[0] in READS or "#" not in pos:
                continue
            seen[pos] = seen.get(pos, 0) + count
            if pos not in order:
                order.append(pos)
    return [p for p in order if seen[p] >= min_seen], sequences


def _units(state: dict | None, fresh: bool) -> int:
    if not state:
        return 0
    return int(state.get("fresh_units" if fresh else "units") or 0)


class BoundarySweep(Fault):
    """Kill `service` just after each boundary position of its unit of work (seen in the warm-up)
    and hold it `hold` seconds just before each effect, then SIGKILL; each started again and given
    fresh work (its crash site counts new units that changed rows, or `ready(run)` holds) before
    the next. Positions past the `max_ordinal`-th call of one kind in a unit (a batch's 5th store)
    are not swept. Stops planning new faults `max_seconds` after the warm-up; what it covered is in
    its detail."""

    kind = "boundary-sweep"

    def __init__(self, service: str, hold: float = 7.0, fallback_after: float = 20.0, max_seconds: float = 60.0,
                 ready: Callable[[Any], bool] | None = None, ready_within: float = 20.0,
                 hold_before: tuple[str, ...] = EFFECTS, max_faults: int = 8, max_ordinal: int = 3,
                 warmup_units: int = 5) -> None:
        super().__init__(service)
        self.hold_seconds, self.fallback_after, self.max_seconds = hold, fallback_after, max_seconds
        self.ready, self.ready_within = ready, ready_within
        self.hold_before, self.max_faults, self.max_ordinal = hold_before, max_faults, max_ordinal
        self.warmup_units = warmup_units
        self.fresh = False
        self.detail.update(positions=[], killed_after=[], held_before=[], missed=[], planned=[])

    def needs(self) -> list[Need]:
        return [Need("service", self.target)]

    def inject(self, run: Target) -> None:
        """Nothing yet: the warm-up (hold) shows the boundaries first."""

    def _warm_up(self, run: Target) -> list[str]:
        """Until the service has finished `warmup_units` units of work and shown a position twice
        (bounded by `ready_within`); then what it showed goes into the history."""
        svc = run.services[self.target]
        deadline = time.monotonic() + self.ready_within
        while True:
            lives = svc.crash_lives()
            positions, sequences = positions_of(lives)
            if (positions and sum(_units(life, False) for life in lives) >= self.warmup_units) \
                    or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        self.fresh = any(_units(life, True) for life in lives)  # its units change rows: sweep on fresh work
        self.detail.update(positions=self._swept(positions), seen=positions, sequences=sequences, fresh=self.fresh)
        common = sorted(sequences.items(), key=lambda kv: -kv[1])[:3]
        shown = "; ".join(f"{text} ({count}x)" for text, count in common) or "none"
        run.history.record("note", "grader", message=f"{self.target}'s units of work as seen: {shown}",
                           boundaries=self.target, positions=positions, sequences=sequences, fresh=self.fresh)
        return positions

    def _swept(self, positions: list[str]) -> list[str]:
        return [p for p in positions if int(p.split("#")[1]) <= self.max_ordinal]

    def _plan(self, positions: list[str]) -> list[tuple[str, str]]:
        plan = [("after", p) for p in positions]
        plan += [("hold", p) for p in positions if p.split("#")[0] in self.hold_before]
        return plan[:self.max_faults]

    def hold(self, run: Target) -> None:
        """The sweep: one fault after another, each applied on its own (it records itself)."""
        svc = run.services[self.target]
        self._warm_up(run)
        started = time.monotonic()
        done: set[tuple[str, str]] = set()
        while time.monotonic() - started < self.max_seconds:
            positions, _ = positions_of(svc.crash_lives())  # a position first seen under the sweep joins it
            for p in self._swept(positions):
                if p not in self.detail["positions"]:
                    self.detail["positions"].append(p)
            todo = [step for step in self._plan(self.detail["positions"]) if step not in done]
            if not todo:
                break
            when, position = todo[0]
            done.add((when, position))
            self.detail["planned"].append(f"{when} {position}")
            self._wait_fresh(run)
            if when == "after":
                fault: Fault = CrashPoint(self.target, when="after", position=position, fresh=self.fresh,
                                          fallback_after=self.fallback_after)
            else:
                fault = HoldThenKill(self.target, position=position, fresh=self.fresh, hold=self.hold_seconds,
                                     fallback_after=self.fallback_after)
            fault.apply(run)
            reached = fault.detail.get("reached") is not None
            if reached:
                self.effective = True
                self.detail["killed_after" if when == "after" else "held_before"].append(position)
            else:
                self.detail["missed"].append(f"{when} {position}: {fault.detail.get('how') or 'not reached'}")
        if not self.detail["positions"] and svc.alive():  # no crash site, or no unit of work: a plain kill
            self.detail["note"] = "no unit of work was seen: a plain SIGKILL instead"
            self.detail["pid"] = svc.proc.pid
            svc.restart()
            svc.wait_healthy(HEALTHY_WITHIN)
            self.effective = True

    def _wait_fresh(self, run: Target) -> None:
        """Until the (restarted) service is applying fresh work: its life's crash site counts a new
        unit (one that changed rows, if its units do) - or the lab's own `ready` says so."""
        svc = run.services[self.target]
        deadline = time.monotonic() + self.ready_within
        base = _units(read_state(svc.crash_state), self.fresh) if svc.crash_state else 0
        while time.monotonic() < deadline:
            try:
                if self.ready is not None:
                    if self.ready(run):
                        return
                elif _units(read_state(svc.crash_state), self.fresh) > base:
                    return
            except Exception:  # not ready yet (a server restarting, a table not there)
                pass
            time.sleep(0.2)

    def heal(self, run: Target) -> None:
        """Every fault of the sweep healed itself (restarted the service)."""

    def describe(self) -> str:
        d = self.detail
        text = (f"kill {self.target} just after each boundary of its unit of work and hold it {self.hold_seconds:g} s "
                f"before each effect, on fresh work")
        if d["positions"]:
            text += f" (positions seen: {', '.join(d['positions'])})"
        if d["planned"]:
            text += f": {coverage_text(d)}"
        return text


def coverage_text(detail: dict) -> str:
    positions = detail.get("positions") or []
    held = detail.get("held_before") or []
    return f"{len(set(detail.get('killed_after') or []))} of {len(positions)} boundaries killed after, {len(held)} held before"


def coverage(history: "History") -> dict[str, str]:
    """Per service swept: "3 of 3 boundaries killed after, 2 held before" (the reports show it)."""
    out: dict[str, str] = {}
    for f in fault_events(history):
        if f["fault"] == BoundarySweep.kind and f.get("detail") is not None:
            out[str(f["target"])] = coverage_text(f["detail"])
    return out


def coverage_gaps(history: "History", service: str) -> str | None:
    """Why the boundaries of `service` were not all probed (None: every position seen was killed
    just after). A check relying on the sweep is SKIP with this reason."""
    sweeps = [f for f in fault_events(history) if f["fault"] == BoundarySweep.kind and f["target"] == service]
    if not sweeps:
        return f"the boundaries of {service} were never swept (the run did not get there)"
    for f in sweeps:
        if f.get("reason"):
            return f"boundary sweep of {service} not injected: {f['reason']}"
        detail = f.get("detail") or {}
        positions = detail.get("positions") or []
        if not positions:
            return f"no unit of work of {service} was seen (its client calls were not intercepted)"
        missing = [p for p in positions if p not in (detail.get("killed_after") or [])]
        if missing:
            return (f"{service} was never killed just after its {', '.join(missing)} (not reached in time; "
                    f"{len(positions) - len(missing)} of {len(positions)} were)")
    return None


def doing_work(service: str, units: int = 2) -> Callable[[Any], bool]:
    """A readiness condition (At.ready): the running life of `service` has finished `units` units of
    work - fresh ones (that changed rows) if its units ever did - since it started. The fault that
    comes after a recovery then lands on a service at work, not on one still starting."""
    def ready(run: Any) -> bool:
        svc = run.services[service]
        state = read_state(svc.crash_state) if svc.crash_state and svc.alive() else None
        fresh = any(_units(life, True) for life in svc.past_lives)
        return _units(state, fresh) >= units
    return ready
