"""Faults on a service's process: kill, crash at a point (with a fallback), hold then kill, pause.

None of them depends on what the service calls: a crash point not reached within its bound becomes
a plain SIGKILL, recorded as such (how="fallback-kill"). Every kill is followed by a restart
(unarmed) unless restart=False, as a supervisor would restart a crashed process.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from ..wait import WaitTimeout, wait_until
from .base import Fault, Need, Target
from .crashpoints import POINTS, crash_env, crash_reached

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

    successor: "Fault | None" = None  # the next fault of the same schedule (set by the scheduler)

    def bring_back(self, run: Target) -> None:
        """Start the service again and wait until it is healthy (HTTP) or alive: unarmed, or armed
        for the next crash fault of the schedule on this service (saving that fault a kill)."""
        svc = self.service(run)
        nxt = self.successor
        if isinstance(nxt, _ArmedKill) and nxt.target == self.target and not nxt.unavailable(run):
            svc.restart(nxt.arm_env(run))
            self.detail["armed_next"] = nxt.id
        else:
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
    """Restart the service armed at a client call, then watch (in a thread, so the run goes on):
    the planned crash, or after `fallback_after` seconds a plain SIGKILL; then restart it unarmed.
    `hold()` (and `heal()`) wait for the watcher, so a fault applied on its own ends restarted.
    Arming is a restart (the hook is configured by env): a running life is SIGKILLed first, at no
    particular point - recorded as previous_pid."""

    when: str  # crash_env's mode for this fault

    def __init__(self, service: str, point: str, nth: int, fallback_after: float, restart: bool) -> None:
        super().__init__(service, restart)
        if point not in POINTS:
            raise ValueError(f"unknown crash point {point!r}; known: {', '.join(POINTS)}")
        if nth < 1 or fallback_after <= 0:
            raise ValueError("nth counts from 1; fallback_after is a positive number of seconds")
        self.point, self.nth, self.fallback_after = point, nth, fallback_after
        self._watcher: threading.Thread | None = None
        self._error: BaseException | None = None
        self._bound = fallback_after

    def marker(self, run: Target) -> Path:
        return (Path(run.out_dir) / f"crash-{self.target}-{self.id}.json").resolve()

    after_s = 0.0  # count only calls made this long after the process started
    writes_only = False  # db-commit: count only commits of transactions that changed rows (fresh work)

    def arm_env(self, run: Target) -> dict[str, str]:
        """The env that arms a life of the service for this fault (also used to pre-arm it)."""
        env = crash_env(self.point, self.when, self.nth, self.marker(run))
        if self.after_s:
            env["LABKIT_CRASH_AFTER_S"] = str(self.after_s)
        if self.writes_only:
            env["LABKIT_CRASH_WRITES"] = "1"
        return env

    def armed(self, run: Target) -> bool:
        """Is the running life already armed for this fault (started so by its predecessor)?"""
        svc = self.service(run)
        return svc.alive() and svc.extra_env.get("LABKIT_CRASH_MARKER") == str(self.marker(run))

    def inject(self, run: Target) -> None:
        svc = self.service(run)
        marker = self.marker(run)
        if self.armed(run):  # pre-armed: no extra kill, and a marker already written still counts
            self.detail["pre_armed"] = True
        else:
            if svc.alive():
                self.detail["previous_pid"] = svc.proc.pid
            svc.restart(self.arm_env(run))
        proc = svc.proc
        self.detail.update(pid=proc.pid, point=self.point, when=self.when, nth=self.nth)
        deadline = time.monotonic() + self.fallback_after
        self._watcher = threading.Thread(target=self._watch, args=(run, proc, marker, deadline), daemon=True,
                                         name=f"nemesis-{self.kind}-{self.id}")
        self._watcher.start()
        _wait_up(svc, proc, marker)  # the workload goes on against a service that answers (or crashed)

    def hold(self, run: Target) -> None:
        self._join()

    def heal(self, run: Target) -> None:
        if self._watcher is None:  # inject failed before arming: just bring it back
            if self.restart:
                self.bring_back(run)
            return
        self._join()
        if self._error is not None:
            raise self._error

    def _join(self) -> None:
        if self._watcher is not None:
            self._watcher.join(self._bound + 3 * HEALTHY_WITHIN)
            if self._watcher.is_alive():
                raise RuntimeError(f"{self.describe()}: the watcher did not finish")

    def _watch(self, run: Target, proc: "ServerProcess", marker: Path, deadline: float) -> None:
        try:
            svc = self.service(run)

            def settled() -> Any:
                return crash_reached(marker) or not proc.alive() or time.monotonic() >= deadline

            wait_until(settled, self.fallback_after + 5, f"{self.target} at its crash point")
            reached = crash_reached(marker)
            if reached is not None:
                self.detail["reached"] = reached
                self.effective = True
                self._reached(svc, proc, reached)
            elif not proc.alive():
                self.detail.update(how="exited", exit_code=proc.popen.returncode)  # died on its own first
            else:
                self.detail["how"] = "fallback-kill"
                svc.kill()
                self.effective = True
            if self.restart:
                self.bring_back(run)
        except BaseException as e:  # re-raised by heal() in the caller's thread
            self._error = e

    def _reached(self, svc: "Service", proc: "ServerProcess", reached: dict) -> None:
        raise NotImplementedError

    def _point(self) -> str:
        return f"{POINT_WORDS[self.point]} #{self.nth}"

    def _fallback(self) -> str:
        how = self.detail.get("how")
        if how == "fallback-kill":
            return f"; not reached within {self.fallback_after:g} s: a plain SIGKILL instead"
        if how == "exited":
            return f"; it exited by itself first (code {self.detail.get('exit_code')})"
        return f"; a plain SIGKILL if not reached within {self.fallback_after:g} s" if not how else ""


class CrashPoint(_ArmedKill):
    """SIGKILL the service just before or after its Nth call of a client operation (see
    crashpoints.py: consumer-ack, producer-flush, producer-produce, db-commit, amqp-ack,
    slot-advance), restarted armed for it; a plain SIGKILL if the point is not reached in time.

    Probes the two sides of one acknowledgement: "before" = the effect happened, its ack did not
    (redelivery: is the effect idempotent?); "after" = acknowledged, is the effect really done?
    """

    kind = "crash-point"

    def __init__(self, service: str, point: str, when: str = "before", nth: int = 1,
                 fallback_after: float = 30.0, restart: bool = True) -> None:
        if when not in ("before", "after"):
            raise ValueError("when is 'before' or 'after'")
        self.when = when
        super().__init__(service, point, nth, fallback_after, restart)

    def _reached(self, svc: "Service", proc: "ServerProcess", reached: dict) -> None:
        self.detail["how"] = "crash-point"
        try:
            wait_until(lambda: not proc.alive(), DEATH_WITHIN, f"{self.target} to die at its crash point")
        except WaitTimeout:
            svc.kill()

    def describe(self) -> str:
        return f"SIGKILL {self.target} just {self.when} its {self._point()}{self._pid()}{self._fallback()}"


class HoldThenKill(_ArmedKill):
    """Stop the calling thread of the service just before its Nth call of a client operation for
    `hold` seconds, its other threads running, then SIGKILL it; a plain SIGKILL if not reached.

    Probes what a client library does in the background while the code is stuck: librdkafka's
    auto-commit (every 5 s) commits offsets of records whose work never finished, a producer's
    linger flushes, pika keeps its connection. `hold` must outlast any such interval (>= 6 s).
    """

    kind = "hold-then-kill"
    when = "hold"

    def __init__(self, service: str, point: str, nth: int = 1, hold: float = 7.0,
                 fallback_after: float = 30.0, restart: bool = True, after_s: float = 0.0,
                 writes_only: bool = False) -> None:
        super().__init__(service, point, nth, fallback_after + after_s, restart)
        self.hold_seconds = hold
        self.after_s = after_s  # e.g. past the replay after a restart: hold on fresh work
        self.writes_only = writes_only  # ... and never on a replayed record skipped as a duplicate
        self._bound = fallback_after + after_s + hold

    def _reached(self, svc: "Service", proc: "ServerProcess", reached: dict) -> None:
        # held since the marker was written: wait out the rest of the hold, then kill
        time.sleep(max(0.0, self.hold_seconds - (time.time() - reached["time"])))
        if proc.alive():
            self.detail["how"] = "hold-then-kill"
            svc.kill()
        else:
            self.detail.update(how="exited-while-held", exit_code=proc.popen.returncode)

    def describe(self) -> str:
        since = f" (counting from {self.after_s:g} s after its start)" if self.after_s else ""
        since += " (counting only transactions that changed rows)" if self.writes_only else ""
        return (f"hold {self.target} just before its {self._point()}{since}{self._pid()} for "
                f"{self.hold_seconds:g} s (its other threads running), then SIGKILL{self._fallback()}")


class Stall(ServiceFault):
    """Make the thread that reaches the service's Nth call of a client operation wait `seconds`
    just before it, then let the call go ahead (its other threads running; nothing dies).

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
        marker = (Path(run.out_dir) / f"stall-{self.target}-{self.id}.json").resolve()
        env = {**crash_env(self.point, "stall", self.nth, marker), "LABKIT_STALL_SECONDS": str(self.seconds)}
        svc.restart(env)  # arming is a restart (the hook reads its env at start)
        self.detail.update(pid=svc.proc.pid, point=self.point, nth=self.nth)
        if svc.spec.http:
            svc.wait_healthy(HEALTHY_WITHIN)
        try:  # bounded: a service that never makes the call is simply not stalled (not effective)
            wait_until(lambda: crash_reached(marker), self.within, f"{self.target} at its stall point")
            self.effective = True
        except WaitTimeout:
            self.detail["how"] = "never reached"

    def hold(self, run: Target) -> None:
        time.sleep(self.seconds)  # the stalled call is under way for this long

    def heal(self, run: Target) -> None:
        """Nothing to undo: the counter is past its Nth call, the service goes on as it is."""

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


def _wait_up(svc: "Service", proc: "ServerProcess", marker: Path) -> None:
    """An HTTP service armed at a crash point: until it answers health, or crashed already."""
    if not svc.spec.http:
        return
    url = svc.base_url + svc.spec.http.health

    def settled() -> bool:
        if not proc.alive() or crash_reached(marker):
            return True
        return httpx.get(url, timeout=1).status_code == 200

    try:
        wait_until(settled, HEALTHY_WITHIN, f"{svc.name} health at {url}", ignore=(httpx.HTTPError,))
    except WaitTimeout as e:
        from ..launch import ServiceFailed

        raise ServiceFailed(f"{svc.name} did not become healthy: {e}\n--- log tail ---\n{svc.log_tail()}") from None
