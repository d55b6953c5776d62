"""Run a submission's services as black-box processes, with the env contract and captured logs."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .lab import ServiceSpec
from .stack.base import StackError
from .stack.procs import ServerProcess, free_port
from .wait import WaitTimeout, wait_until


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

    def start(self, extra_env: dict[str, str] | None = None) -> "Service":
        """Start the process; `extra_env` (e.g. a crash point) applies to this life only."""
        self.extra_env = dict(extra_env or {})
        env = {**os.environ, **self.env, **self.spec.env, **self.extra_env}
        # The crash hook (extra_env) goes first: a learner's own sitecustomize.py must not hide it
        # (ours chains to theirs). It already carries the inherited PYTHONPATH.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (self.extra_env.get("PYTHONPATH"), str(self.submission), os.environ.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("OTEL_SERVICE_NAME", self.name)
        if self.spec.http:
            self.port = self.port or free_port()
            env[self.spec.http.port_env] = str(self.port)
        argv = [sys.executable if a in ("python", "python3") else a for a in self.spec.command]
        with open(self.log, "a") as f:
            f.write(f"--- labkit: starting {' '.join(self.spec.command)} (life {self.restarts + 1}) ---\n")
        try:
            self.proc = ServerProcess(argv, self.log, env=env, cwd=self.submission)
        except StackError as e:
            raise ServiceFailed(f"{self.name}: {e}") from None
        return self

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
            raise ServiceFailed(f"{self.name} exited with code {self.proc.popen.returncode}\n"
                                f"--- log tail ---\n{self.log_tail()}")

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.popen.poll()

    def kill(self) -> None:
        """SIGKILL: the crash a real deployment sees (no shutdown hooks run)."""
        if self.proc:
            self._note_own_death()
            self.proc.kill()

    def stop(self, timeout: float = 10) -> None:
        if self.proc:
            self._note_own_death()
            self.proc.stop(timeout=timeout)

    def _note_own_death(self) -> None:
        code = self.proc.popen.poll() if self.proc else None
        if code is not None and code != -9:  # -9 at this point is a crash point we planted
            self.died_on_its_own = True

    def restart(self, extra_env: dict[str, str] | None = None) -> "Service":
        self.kill()
        self.restarts += 1
        return self.start(extra_env)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def launch_services(specs: dict[str, ServiceSpec], submission: Path, env: dict[str, str],
                    log_dir: Path) -> dict[str, Service]:
    """Create (not start) one Service per spec; a missing submission dir is reported clearly."""
    if not submission.is_dir():
        raise ServiceFailed(f"submission folder {submission} does not exist")
    log_dir.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        (log_dir / f"{spec}.log").unlink(missing_ok=True)  # a reused output folder starts clean
    return {name: Service(spec, submission.resolve(), env, log_dir) for name, spec in specs.items()}
