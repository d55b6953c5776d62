"""The compose runtime: what `make lab-N` uses when a Docker daemon answers.

The lab's infrastructure comes up from compose/<lab>.yaml with `docker compose up --wait`, on host
ports this runtime picks (passed as KAFKA_PORT, POSTGRES_PORT, ...), and the learner's services run
as local processes against it, exactly as on the native runtime. With LABKIT_DOCKER_NETWORK=host the
CI override (local images, host networking) is added.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from . import probes
from .base import Server, StackError, local_url
from .procs import free_port
from ..wait import wait_until

COMPOSE_DIR = Path(__file__).resolve().parents[2] / "compose"
PORT_VARS = {"kafka": "KAFKA_PORT", "postgres": "POSTGRES_PORT", "redis": "REDIS_PORT", "rabbitmq": "RABBITMQ_PORT"}


def compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0


def compose_files(lab_id: str) -> list[Path]:
    files = [COMPOSE_DIR / f"{lab_id}.yaml"]
    if not files[0].exists():
        raise StackError(f"no Compose file for {lab_id}: expected {files[0]}")
    if os.environ.get("LABKIT_DOCKER_NETWORK") == "host":
        files.append(COMPOSE_DIR / "ci.override.yaml")
    return files


class ComposeServer(Server):
    def __init__(self, kind: str, lab_id: str, ports: dict[str, int]) -> None:
        self.kind = kind  # type: ignore[misc]  # one class serves every kind
        self.lab_id, self.ports = lab_id, ports

    @property
    def url(self) -> str:
        return local_url(self.kind, self.ports[self.kind])

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        files = [a for f in compose_files(self.lab_id) for a in ("-f", str(f))]
        env = {**os.environ, **{PORT_VARS[k]: str(p) for k, p in self.ports.items()}}
        project = f"labkit-{self.lab_id}-{os.getpid()}"  # two runs on one machine never share containers
        return subprocess.run(["docker", "compose", "-p", project, *files, *args],
                              capture_output=True, text=True, env=env, timeout=timeout)

    def start(self, timeout: float) -> None:
        out = self.compose("up", "-d", "--wait", "--wait-timeout", str(int(timeout)), self.kind, timeout=timeout + 60)
        if out.returncode != 0:
            raise StackError(f"docker compose could not start {self.kind}:\n{out.stderr[-2000:]}")
        wait_until(lambda: probes.probe(self.kind, self.url), timeout, f"{self.kind} (compose)", ignore=(Exception,))

    def stop(self) -> None:
        # The whole project, named volumes included: every server of the stack shares it, so the
        # first stop does the work and the others find nothing left.
        self.compose("down", "--volumes", "--remove-orphans", timeout=120)

    def kill(self) -> None:
        self.compose("kill", self.kind)

    def restart(self, timeout: float = 60) -> None:
        self.compose("restart", self.kind)
        wait_until(lambda: probes.probe(self.kind, self.url), timeout, f"{self.kind} restart", ignore=(Exception,))


def compose_servers(kinds: list[str], lab_id: str) -> dict[str, Server]:
    if not compose_available():
        raise StackError("runtime 'compose' needs Docker with the Compose v2 plugin (docker compose version)")
    ports = {kind: free_port() for kind in kinds}
    return {kind: ComposeServer(kind, lab_id, ports) for kind in kinds}
