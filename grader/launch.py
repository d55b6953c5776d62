"""Run a submission's services as black-box processes, with the env contract and captured logs.

Without a sandbox (`labkit check`: learners grading their own, trusted code) a service runs as the
grader's user with its environment. With one (`labkit grade`: untrusted code) it runs isolated: its
own uid, copy, allow-listed env, limits and capped log (grader/sandbox).
"""
from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from .lab import ServiceSpec
from .nemesis.crashpoints import CRASHSITE, Arms, read_state, site_env
from .stack.base import StackError
from .stack.procs import ServerProcess, free_port, tail
from .wait import WaitTimeout, wait_until

if TYPE_CHECKING:
    from .sandbox import Sandbox


class ServiceFailed(RuntimeError):
    """A learner's service did not start or died; the message carries its log tail."""


@dataclass
class Service:
    """One running service of a submission. Restartable with the same port and env."""

    spec: ServiceSpec
    submission: Path
    env: dict[str, str]
    log_dir: Path
    port: int | None = None
    proc: ServerProcess | None = None
    restarts: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)
    died_on_its_own: bool = False  # exited without us stopping or killing it (a crash of the learner's code)
    sandbox: "Sandbox | None" = None  # isolate this untrusted service (None: run it as we run)
    supervised: bool = False  # restarted by the run's supervisor if it exits on its own (set by start, cleared by stop)
    lives: int = 0  # lives started so far: the log names each one, and no number is started twice
    # One owner per life: the supervisor and a fault's restart may both want the next life; whoever
    # takes this first starts it, the other sees the process it meant to replace is gone already.
    lifecycle: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    crash_dir: Path | None = None  # the crash site's control and state files (None: no crash site)
    past_lives: list[dict] = field(default_factory=list)  # the crash site's state of each life that ended
    _arms: Arms | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def log(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    @property
    def base_url(self) -> str:
        assert self.port, f"{self.name} has no HTTP port"
        return f"http://127.0.0.1:{self.port}"

    @property
    def arms(self) -> Arms:
        """The live arms of this service's crash site (grader/nemesis/crashpoints.py)."""
        if self._arms is None:
            assert self.crash_dir is not None, f"{self.name} runs without a crash site"
            self._arms = Arms(self.crash_dir / "arms" / f"{self.name}.json")
        return self._arms

    @property
    def crash_state(self) -> Path | None:
        """Where this life's crash site writes what it saw (boundaries) and fired."""
        return self.crash_dir / f"{self.name}.state.json" if self.crash_dir else None

    def start(self, extra_env: dict[str, str] | None = None) -> "Service":
        """Start the process; `extra_env` applies to this life only. Every life gets the crash site,
        armed live (a restart is never needed to arm it). A life still running is SIGKILLed first: a
        service never has two untracked copies."""
        with self.lifecycle:
            if self.alive():
                self.kill()
            return self._start(extra_env)

    def start_after(self, seen: "ServerProcess | None") -> bool:
        """Start the next life if `seen` (the process the caller saw exit) is still the current one;
        False if another owner (a fault's restart) already started it."""
        with self.lifecycle:
            if self.proc is not seen:
                return False
            self._start(None)
            return True

    def _start(self, extra_env: dict[str, str] | None) -> "Service":
        self.extra_env = dict(extra_env or {})
        self.supervised = True
        self._harvest()
        crash = {}
        if self.crash_dir is not None and "LABKIT_CRASH" not in self.extra_env:
            crash = site_env(self.arms.control, self.crash_state)
        inherited = {} if self.sandbox else os.environ  # a sandbox allows the contract only
        # lab.toml's env holds defaults (and names what a sandbox lets through); the run's own
        # values (self.env: the contract, plus what a scenario sets) override them.
        env = {**inherited, **self.spec.env, **self.env, **crash, **self.extra_env}
        # The crash hook goes first: a learner's own sitecustomize.py must not hide it (ours chains
        # to theirs).
        hook = str(CRASHSITE) if (crash or "LABKIT_CRASH" in self.extra_env) else None
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(
            p for p in (hook, self.extra_env.get("PYTHONPATH"), str(self.submission), os.environ.get("PYTHONPATH"))
            if p))
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("OTEL_SERVICE_NAME", self.name)
        allowed = list(self.spec.env)
        if self.spec.http:
            self.port = self.port or free_port()
            env[self.spec.http.port_env] = str(self.port)
            allowed.append(self.spec.http.port_env)
        argv = [sys.executable if a in ("python", "python3") else a for a in self.spec.command]
        self.lives += 1
        with open(self.log, "a") as f:
            f.write(f"--- labkit: starting {' '.join(self.spec.command)} (life {self.lives}) ---\n")
        try:
            if self.sandbox:
                self.proc = self.sandbox.spawn(argv, self.log, env, allowed=allowed)
            else:
                self.proc = ServerProcess(argv, self.log, env=env, cwd=self.submission)
        except (StackError, OSError) as e:
            raise ServiceFailed(f"{self.name}: {e}") from None
        return self

    def _harvest(self) -> None:
        """Keep what the crash site of the life that ended saw; the next life starts a clean file."""
        state = self.crash_state
        if state is None:
            return
        seen = read_state(state)
        if seen is not None:
            self.past_lives.append(seen)
        state.unlink(missing_ok=True)

    def crash_lives(self) -> list[dict]:
        """The crash site's state of every life so far, the running one last (as it last wrote it)."""
        current = read_state(self.crash_state) if self.crash_state else None
        return self.past_lives + ([current] if current else [])

    def wait_healthy(self, timeout: float = 30) -> None:
        """HTTP services: until health answers 200. Others: until alive a moment (no probe exists)."""
        if not self.spec.http:
            self.check_alive()
            return
        url = self.base_url + self.spec.http.health

        def healthy() -> bool:
            self.check_alive()
            return httpx.get(url, timeout=1).status_code == 200

        try:
            wait_until(healthy, timeout, f"{self.name} health at {url}", ignore=(httpx.HTTPError,))
        except WaitTimeout as e:
            raise ServiceFailed(f"{self.name} did not become healthy: {e}\n--- log tail ---\n{self.log_tail()}") from None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def check_alive(self) -> None:
        if self.proc is not None and not self.proc.alive():
            raise ServiceFailed(f"{self.name} exited with code {self.proc.exit_code()}\n"
                                f"--- log tail ---\n{self.log_tail()}")

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.exit_code()

    def kill(self) -> None:
        """SIGKILL: the crash a real deployment sees (no shutdown hooks run)."""
        if self.proc:
            self._note_own_death()
            self.proc.kill()

    def stop(self, timeout: float = 10) -> None:
        self.supervised = False
        if self.proc:
            self._note_own_death()
            self.proc.stop(timeout=timeout)

    def _note_own_death(self) -> None:
        code = self.proc.exit_code() if self.proc else None
        if code is not None and code != -9:  # -9 at this point is a crash point we planted
            self.died_on_its_own = True

    def restart(self, extra_env: dict[str, str] | None = None) -> "Service":
        with self.lifecycle:  # the kill and the next life are one step: nobody starts a life in between
            self.kill()
            self.restarts += 1
            return self._start(extra_env)

    def log_tail(self, lines: int = 30) -> str:
        return tail(self.log, lines)  # from the end: a flooded log is never read whole


def launch_services(specs: dict[str, ServiceSpec], submission: Path, env: dict[str, str],
                    log_dir: Path, sandbox: "Sandbox | None" = None, crash_dir: Path | None = None) -> dict[str, Service]:
    """Create (not start) one Service per spec; a missing submission dir is reported clearly.
    With `sandbox` (open), every service runs isolated in it. The crash site's files go into
    `crash_dir` (default: `crash` next to the logs)."""
    if not submission.is_dir():
        raise ServiceFailed(f"submission folder {submission} does not exist")
    log_dir.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        (log_dir / f"{spec}.log").unlink(missing_ok=True)  # a reused output folder starts clean
    crash_dir = (crash_dir or log_dir.parent / "crash").resolve()
    crash_dir.mkdir(parents=True, exist_ok=True)
    for name in specs:  # a reused output folder: no state of an earlier run's life
        (crash_dir / f"{name}.state.json").unlink(missing_ok=True)
    return {name: Service(spec, submission.resolve(), env, log_dir, sandbox=sandbox, crash_dir=crash_dir)
            for name, spec in specs.items()}
