"""What every fault is: a small part that declares its needs, records itself, and heals itself.

A fault's life, as the history shows it (kind "fault", actor "nemesis"):
  phase="start"        injected (with what it did: pid killed, proxy cut, ...)
  phase="end"          healed; `effective` says whether it bit (a crash point reached, or its
                       fallback kill, counts; a kill of a process that was already gone does not)
  phase="unavailable"  never injected: this runtime or this run lacks what it needs (`reason`)
Checks look these up (`grader.nemesis.happened`) and SKIP when the faults they need did not bite.

Faults never depend on the submission's cooperation: whatever a fault waits for from the service
(a crash point's Nth call) has a bound, after which the fault acts anyway (e.g. a plain SIGKILL).
"""
from __future__ import annotations

import itertools
import threading
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Protocol

if TYPE_CHECKING:
    from ..history import History
    from ..launch import Service
    from ..stack import Stack
    from .proxy import TcpProxy

_ids = itertools.count(1)
_ids_lock = threading.Lock()


class Target(Protocol):
    """What faults act on: a graded run (grader.runner.Run) or a test's equivalent."""

    history: "History"
    services: dict[str, "Service"]
    stack: "Stack"
    proxies: dict[str, "TcpProxy"]  # kind -> the fault proxy every service's connection goes through
    out_dir: Any  # Path: where crash markers go


@dataclass(frozen=True)
class Need:
    """Something a fault requires of the runtime. kind: "proxy" (a fault proxy in front of a server),
    "server" (a server of that kind in the stack), "restart" (a server that can be restarted),
    "durable-restart" (... keeping its data), "service" (a process of the submission).
    Servers say what they can do with `restartable` / `durable` attributes; no attribute means no."""

    kind: str
    target: str

    def missing(self, run: Target) -> str | None:
        if self.kind == "proxy":
            return None if self.target in run.proxies else f"the {_runtime(run)} runtime has no fault proxy for {self.target}"
        if self.kind in ("server", "restart", "durable-restart"):
            server = run.stack.servers.get(self.target)
            if server is None:
                return f"no {self.target} server in this stack"
            if self.kind == "server":
                return None
            if not getattr(server, "restartable", False):
                return f"{self.target} cannot be restarted on the {_runtime(run)} runtime"
            if self.kind == "durable-restart" and not getattr(server, "durable", False):
                return f"{self.target} loses its data on restart on the {_runtime(run)} runtime"
            return None
        if self.kind == "service":
            return None if self.target in run.services else f"no service {self.target!r} in this lab"
        return f"unknown need {self.kind}"


def _runtime(run: Target) -> str:
    return getattr(run.stack, "runtime", "this")


class Fault(ABC):
    """One fault. Subclasses set `kind`, take their target in __init__, and implement inject/heal.

    `hold()` is what happens between inject and heal when the fault runs on its own (`apply`):
    by default nothing; timed faults wait their duration. As a context manager (`active`), the
    caller's block is the hold: `with Cut("kafka").active(run): send_orders()`.
    """

    kind: ClassVar[str]

    def __init__(self, target: str) -> None:
        self.target = target
        self.effective = False  # set by inject/heal when the fault really bit
        self.detail: dict[str, Any] = {}  # what happened, for the history and the report
        with _ids_lock:
            self.id = next(_ids)

    def needs(self) -> list[Need]:
        return []

    def unavailable(self, run: Target) -> str | None:
        """Why this fault cannot run here, or None."""
        for need in self.needs():
            reason = need.missing(run)
            if reason:
                return reason
        return None

    @abstractmethod
    def inject(self, run: Target) -> None:
        """Start the fault. Set self.effective / self.detail as it goes."""

    def hold(self, run: Target) -> None:
        """Between inject and heal when applied on its own."""

    @abstractmethod
    def heal(self, run: Target) -> None:
        """Undo the fault (restart what was killed, heal the proxy). Must be safe after a failed inject."""

    def describe(self) -> str:
        """What it does, in words a learner reads in the report. Recorded at start and again at the
        end, when self.detail can fill in what only injecting revealed (a pid, a fallback)."""
        return f"{self.kind} {self.target}"

    # --- the lifecycle, recorded -----------------------------------------------------------
    def _record(self, run: Target, phase: str, **extra: Any) -> None:
        run.history.record("fault", "nemesis", fault=self.kind, target=self.target, fid=self.id, phase=phase,
                           **extra)

    @contextmanager
    def active(self, run: Target) -> Iterator[bool]:
        """Inject on enter, heal on exit; yields False (and records why) if it cannot run here."""
        reason = self.unavailable(run)
        if reason:
            self._record(run, "unavailable", reason=reason, description=self.describe())
            yield False
            return
        self._record(run, "start", description=self.describe())
        try:
            self.inject(run)
            yield True
        finally:
            try:
                self.heal(run)
            finally:
                self._record(run, "end", effective=self.effective, description=self.describe(), **self.detail)

    def apply(self, run: Target) -> bool:
        """The whole fault on its own: inject, hold, heal. True if it bit."""
        with self.active(run) as running:
            if running:
                self.hold(run)
        return self.effective


# --- reading faults back from a history (for checks and reports) -----------------------------

def fault_events(history: "History") -> list[dict]:
    """One summary per fault: kind, target, fid, start/end times, effective, reason, detail."""
    faults: dict[int, dict] = {}
    for e in history.events("fault"):
        d = e.data
        if "fid" not in d:  # an event recorded by older code or by hand
            continue
        f = faults.setdefault(d["fid"], {"fault": d.get("fault"), "target": d.get("target"), "fid": d["fid"],
                                         "start": None, "end": None, "effective": False, "reason": None})
        if d.get("phase") == "start":
            f["start"] = e.t
            f["description"] = d.get("description")
        elif d.get("phase") == "end":
            f["end"] = e.t
            f["effective"] = bool(d.get("effective"))
            f["description"] = d.get("description") or f.get("description")  # the end knows more
            f["detail"] = {k: v for k, v in d.items()
                           if k not in ("fault", "target", "fid", "phase", "effective", "description")}
        elif d.get("phase") == "unavailable":
            f["reason"] = d.get("reason")
            f["description"] = d.get("description")
    return list(faults.values())


BOUNDARIES = "boundaries"  # a check's need: every boundary of the target's unit of work killed just after


def happened(history: "History", kind: str, target: str | None = None) -> bool:
    """Did at least one fault of this kind (on this target) bite during the run? (kind "boundaries":
    was the target killed just after every boundary position its sweep saw?)"""
    if kind == BOUNDARIES:
        from .boundaries import coverage_gaps

        return coverage_gaps(history, str(target)) is None
    return any(f["effective"] and f["fault"] == kind and (target is None or f["target"] == target)
               for f in fault_events(history))


def why_not(history: "History", kind: str, target: str | None = None) -> str:
    """A reason a learner can read when a needed fault did not happen."""
    if kind == BOUNDARIES:
        from .boundaries import coverage_gaps

        return coverage_gaps(history, str(target)) or ""
    matching = [f for f in fault_events(history) if f["fault"] == kind and (target is None or f["target"] == target)]
    what = f"{kind}" + (f" of {target}" if target else "")
    for f in matching:
        if f["reason"]:
            return f"{what} not injected: {f['reason']}"
    if matching:
        return f"{what} was injected but did not take effect"
    return f"{what} was never injected (the run did not get there)"
