"""Faults on a service's process: kill, crash at a point (with a fallback), hold then kill, pause.

None of them depends on what the service calls: a crash point not reached within its bound becomes
a plain SIGKILL, recorded as such (how="fallback-kill"). Every kill is followed by a restart
unless restart=False, as a supervisor would restart a crashed process. Crash points are armed
live (grader/nemesis/crashpoints.py): arming never restarts a service.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

from ..wait import WaitTimeout, wait_until
from .base import Fault, Need, Target
from .crashpoints import POINTS, crash_reached

if TYPE_CHECKING:
    from ..launch import Service
    from ..stack.procs import ServerProcess

HEALTHY_WITHIN = 30.0  # seconds a restarted service has to answer its health check
DEATH_WITHIN = 10.0  # seconds between a crash point's marker and the process being gone

# How a crash point reads in a report: "just before its offset commit #12".
POINT_WORDS = {
    "consumer-ack": "offset commit",
    "producer-flush": "producer flush",
    "producer-produce": "produce call",
    "db-commit": "database commit",
    "amqp-ack": "AMQP ack",
    "slot-advance": "replication slot advance",
    "redis-write": "Redis write",
    "amqp-publish": "AMQP publish",
    "http-call": "outgoing HTTP call",
}


class ServiceFault(Fault):
    """A fault on one process of the submission (`run.services[service]`)."""

    def __init__(self, service: str, restart: bool = True) -> None:
        super().__init__(service)
        self.restart = restart

    def needs(self) -> list[Need]:
        return [Need("service", self.target)]

    def service(self, run: Target) -> "Service":
        return run.services[self.target]

    def bring_back(self, run: Target) -> None:
        """Start the service again (its crash site reads its arms live: nothing to pass it) and wait
        until it is healthy (HTTP) or alive."""
        svc = self.service(run)
        svc.restart()
        svc.wait_healthy(HEALTHY_WITHIN)
        self.detail["new_pid"] = svc.proc.pid if svc.proc else None

    def _pid(self) -> str:
        return f" (pid {self.detail['pid']})" if self.detail.get("pid") else ""


class Kill(ServiceFault):
    """SIGKILL the service now, at a moment the grader chooses, whatever it is doing.

    Probes every gap between an effect and its acknowledgement that the service does not announce
    by a client call (work between two transactions of one record, a long transaction, an HTTP
    request between its database write and its answer). Effective if the process was alive.
    """

    kind = "kill"

    def inject(self, run: Target) -> None:
        svc = self.service(run)
        if svc.alive():
            self.detail["pid"] = svc.proc.pid
            svc.kill()
            self.effective = True
        else:
            self.detail["note"] = "the service was not running"

    def heal(self, run: Target) -> None:
        if self.restart:
            self.bring_back(run)

    def describe(self) -> str:
        return f"SIGKILL {self.target}{self._pid()}" + (", then start it again" if self.restart else "")


class _ArmedKill(ServiceFault):
    """Arm the running service's crash site at a client call (live: no restart), then watch (in a
    thread, so the run goes on): the planned crash, or after `fallback_after` seconds a plain
    SIGKILL; then start it again. `hold()` (and `heal()`) wait for the watcher, so a fault applied
    on its own ends restarted. The arm outlives a life that exits by itself (the supervisor starts
    the next one, armed the same); it is taken back before anything else once the watch is over.

    The arm is a point and a count (`point`, `nth`: the nth such call from now) or a unit position
    (`position`, e.g. "db-commit#2": the 2nd database commit of a unit of work, on fresh work if
    `fresh` - a unit that changed rows - see grader/nemesis/boundaries.py)."""

    when: str  # the crash site's mode for this fault

    def __init__(self, service: str, point: str | None, nth: int, fallback_after: float, restart: bool,
                 position: str | None = None, fresh: bool = False) -> None:
        super().__init__(service, restart)
        if position is None and point not in POINTS:
            raise ValueError(f"unknown crash point {point!r}; known: {', '.join(POINTS)}")
        if nth < 1 or fallback_after <= 0:
            raise ValueError("nth counts from 1; fallback_after is a positive number of seconds")
        self.point, self.nth, self.fallback_after = point, nth, fallback_after
        self.position, self.fresh = position, fresh
        self._watcher: threading.Thread | None = None
        self._error: BaseException | None = None
        self._bound = fallback_after

    after_s = 0.0  # count only calls made this long after arming
    writes_only = False  # db-commit: count only commits of transactions that changed rows (fresh work)

    def arm_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"when": self.when, "not_before": time.time() + self.after_s}
        if self.position:
            spec.update(position=self.position, fresh=self.fresh)
        else:
            spec.update(point=self.point, nth=self.nth, writes_only=self.writes_only)
        return spec

    def inject(self, run: Target) -> None:
        svc = self.service(run)
        if svc.crash_dir is None:
            raise RuntimeError(f"{self.target} runs without a crash site")
        svc.arms.arm(self.id, **self.arm_spec())
        self.detail.update(pid=svc.proc.pid if svc.proc else None, when=self.when)
        self.detail.update({"position": self.position} if self.position else {"point": self.point, "nth": self.nth})
        deadline = time.monotonic() + self.fallback_after + self.after_s
        self._watcher = threading.Thread(target=self._watch, args=(run, deadline), daemon=True,
                                         name=f"nemesis-{self.kind}-{self.id}")
        self._watcher.start()

    def hold(self, run: Target) -> None:
        self._join()

    def heal(self, run: Target) -> None:
        if self._watcher is None:  # inject failed before arming: nothing to undo
            self.service(run).arms.disarm(self.id) if self.service(run).crash_dir else None
            return
        self._join()
        if self._error is not None:
            raise self._error

    def _join(self) -> None:
        if self._watcher is not None:
            self._watcher.join(self._bound + self.after_s + 3 * HEALTHY_WITHIN)
            if self._watcher.is_alive():
                raise RuntimeError(f"{self.describe()}: the watcher did not finish")

    def _watch(self, run: Target, deadline: float) -> None:
        svc = self.service(run)
        try:
            def settled() -> Any:
                return crash_reached(svc.crash_state, self.id) or time.monotonic() >= deadline

            wait_until(settled, self.fallback_after + self.after_s + 5, f"{self.target} at its crash point")
            reached = crash_reached(svc.crash_state, self.id)
            svc.arms.disarm(self.id)  # first: no later life may fire it
            proc = svc.proc
            if reached is not None:
                self.detail["reached"] = reached
                self.effective = True
                self._reached(svc, proc, reached)
            elif proc is not None and proc.alive():
                self.detail["how"] = "fallback-kill"
                self.detail["pid"] = proc.pid
                svc.kill()
                self.effective = True
            else:  # down (exited by itself: the supervisor's to start again), never reached
                self.detail.update(how="not-running", exit_code=svc.exit_code())
                return
            if self.restart:
                self.bring_back(run)
        except BaseException as e:  # re-raised by heal() in the caller's thread
            self._error = e
        finally:
            try:
                svc.arms.disarm(self.id)
            except Exception:
                pass

    def _reached(self, svc: "Service", proc: "ServerProcess", reached: dict) -> None:
        raise NotImplementedError

    def _point(self) -> str:
        if self.position:
            kind, _, n = self.position.partition("#")
            fresh = " on fresh work" if self.fresh else ""
            return f"{POINT_WORDS.get(kind, kind)} #{n} of a unit of work{fresh}"
        return f"{POINT_WORDS[self.point]} #{self.nth}"

    def _fallback(self) -> str:
        how = self.detail.get("how")
        if how == "fallback-kill":
            return f"; not reached within {self.fallback_after:g} s: a plain SIGKILL instead"
        if how == "not-running":
            return f"; not reached, and the service was not running (exit code {self.detail.get('exit_code')})"
        return f"; a plain SIGKILL if not reached within {self.fallback_after:g} s" if not how else ""


class CrashPoint(_ArmedKill):
    """SIGKILL the service just before or after a client call (see crashpoints.py: consumer-ack,
    producer-flush, producer-produce, db-commit, amqp-ack, slot-advance; or a unit position),
    armed live; a plain SIGKILL if the point is not reached in time. Then it is started again.

    Probes the two sides of one acknowledgement: "before" = the effect happened, its ack did not
    (redelivery: is the effect idempotent?); "after" = acknowledged, is the effect really done?
    """

    kind = "crash-point"

    def __init__(self, service: str, point: str | None = None, when: str = "before", nth: int = 1,
                 fallback_after: float = 30.0, restart: bool = True, position: str | None = None,
                 fresh: bool = False) -> None:
        if when not in ("before", "after"):
            raise ValueError("when is 'before' or 'after'")
        self.when = when
        super().__init__(service, point, nth, fallback_after, restart, position, fresh)

    def _reached(self, svc: "Service", proc: "ServerProcess", reached: dict) -> None:
        self.detail["how"] = "crash-point"
        self.detail["pid"] = proc.pid if proc else None
        try:
            wait_until(lambda: proc is None or not proc.alive(), DEATH_WITHIN, f"{self.target} to die at its crash point")
        except WaitTimeout:
            svc.kill()

    def describe(self) -> str:
        return f"SIGKILL {self.target} just {self.when} its {self._point()}{self._pid()}{self._fallback()}"


class HoldThenKill(_ArmedKill):
    """Stop the calling thread of the service just before a client call for `hold` seconds, its
    other threads running, then SIGKILL it; a plain SIGKILL if not reached. Armed live.

    Probes what a client library does in the background while the code is stuck: librdkafka's
    auto-commit (every 5 s) commits offsets of records whose work never finished, a producer's
    linger flushes, pika keeps its connection. `hold` must outlast any such interval (>= 6 s).
    """

    kind = "hold-then-kill"
    when = "hold"

    def __init__(self, service: str, point: str | None = None, nth: int = 1, hold: float = 7.0,
                 fallback_after: float = 30.0, restart: bool = True, after_s: float = 0.0,
                 writes_only: bool = False, position: str | None = None, fresh: bool = False) -> None:
        super().__init__(service, point, nth, fallback_after, restart, position, fresh)
        self.hold_seconds = hold
        self.after_s = after_s  # e.g. past a replay: hold on fresh work
        self.writes_only = writes_only  # ... and never on a replayed record skipped as a duplicate
        self._bound = fallback_after + after_s + hold

    def _reached(self, svc: "Service", proc: "ServerProcess", reached: dict) -> None:
        # held since the marker was written: wait out the rest of the hold, then kill
        time.sleep(max(0.0, self.hold_seconds - (time.time() - reached["time"])))
        self.detail["pid"] = proc.pid if proc else None
        if proc is not None and proc.alive():
            self.detail["how"] = "hold-then-kill"
            svc.kill()
        else:
            self.detail.update(how="exited-while-held", exit_code=proc.popen.returncode if proc else None)

    def describe(self) -> str:
        since = f" (counting from {self.after_s:g} s after arming)" if self.after_s else ""
        since += " (counting only transactions that changed rows)" if self.writes_only else ""
        return (f"hold {self.target} just before its {self._point()}{since}{self._pid()} for "
                f"{self.hold_seconds:g} s (its other threads running), then SIGKILL{self._fallback()}")


class Stall(ServiceFault):
    """Make the thread that reaches the service's Nth call of a client operation (counted from
    arming, live) wait `seconds` just before it, then let the call go ahead (its other threads
    running; nothing dies).

    Probes code that assumes the order things start in is the order they finish in: a transaction
    stalled before its commit while later ones commit around it (a relay polling the outbox by id
    skips it for good; log-based CDC sees it in commit order).
    """

    kind = "stall"

    def __init__(self, service: str, point: str, nth: int = 1, seconds: float = 3.0, within: float = 30.0) -> None:
        super().__init__(service, restart=False)
        if point not in POINTS:
            raise ValueError(f"unknown crash point {point!r}; known: {', '.join(POINTS)}")
        self.point, self.nth, self.seconds, self.within = point, nth, seconds, within

    def inject(self, run: Target) -> None:
        svc = self.service(run)
        svc.arms.arm(self.id, point=self.point, when="stall", nth=self.nth, stall_s=self.seconds)
        self.detail.update(pid=svc.proc.pid if svc.proc else None, point=self.point, nth=self.nth)
        try:  # bounded: a service that never makes the call is simply not stalled (not effective)
            wait_until(lambda: crash_reached(svc.crash_state, self.id), self.within, f"{self.target} at its stall point")
            self.effective = True
        except WaitTimeout:
            self.detail["how"] = "never reached"
        finally:
            svc.arms.disarm(self.id)

    def hold(self, run: Target) -> None:
        time.sleep(self.seconds)  # the stalled call is under way for this long

    def heal(self, run: Target) -> None:
        """Nothing to undo: the arm was taken back once it fired, the service goes on as it is."""

    def describe(self) -> str:
        return (f"stall {self.target}'s thread {self.seconds:g} s just before its {POINT_WORDS[self.point]} "
                f"#{self.nth}, then let it go on")


class Pause(ServiceFault):
    """SIGSTOP the service's whole process group, SIGCONT it `seconds` later (applied on its own;
    as a context manager, for the caller's block).

    Probes the zombie: a consumer frozen past its session timeout (Tansu takes its partitions away
    after session.timeout.ms 6000 + a rejoin: ~9 s) wakes up believing it still owns them, with
    records in hand and offsets to commit - a GC pause or a stopped VM looks the same.
    """

    kind = "pause"

    def __init__(self, service: str, seconds: float = 9.0) -> None:
        super().__init__(service, restart=False)
        self.seconds = seconds
        self._pid_paused: int | None = None

    def inject(self, run: Target) -> None:
        svc = self.service(run)
        if not svc.alive():
            self.detail["note"] = "the service was not running"
            return
        pid = svc.proc.pid  # started in a session of its own: its process group id is its pid
        os.killpg(pid, signal.SIGSTOP)
        self._pid_paused = pid
        self.detail.update(pid=pid, seconds=self.seconds)
        self.effective = True

    def hold(self, run: Target) -> None:
        time.sleep(self.seconds)

    def heal(self, run: Target) -> None:
        if self._pid_paused is not None:
            try:
                os.killpg(self._pid_paused, signal.SIGCONT)
            except ProcessLookupError:  # killed while paused (another fault): nothing to wake
                pass
            self._pid_paused = None

    def describe(self) -> str:
        return (f"SIGSTOP {self.target}{self._pid()} for {self.seconds:g} s, then SIGCONT "
                f"(longer than a consumer session timeout)")
