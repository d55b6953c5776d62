"""The docker runtime: each server a container, started with testcontainers-python.

Two network modes:
- bridge (Docker's default on a laptop): the container's port is published on a free host port;
- host (LABKIT_DOCKER_NETWORK=host, or automatic when the daemon has no bridge network, as in CI):
  the container shares the host's network and listens on a free port on 127.0.0.1. Testcontainers'
  port lookups do not work there, so this runtime picks and reports 127.0.0.1:<port> itself.
Images come from LABKIT_IMAGE_<KIND> (official images by default), so CI and offline workshops can
use locally built ones. Ryuk is off unless TESTCONTAINERS_RYUK_DISABLED says otherwise (its image
cannot be pulled everywhere): containers are removed by stop(), by the guardian if this process is
killed, and carry the label labkit=1 for `.ci/docker.sh cleanup`.

Testcontainers' per-service modules (KafkaContainer, PostgresContainer, ...) are not used: their
readiness waits read mapped ports, which host networking does not have, and they pin each image's
own configuration. DockerContainer plus the shared real-request probes works for both modes and for
the official images as well as the CI ones.
"""
from __future__ import annotations

import os
import secrets
from typing import ClassVar

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

from testcontainers.core.container import DockerContainer  # noqa: E402

from ..wait import WaitTimeout, wait_until  # noqa: E402
from . import probes  # noqa: E402
from .base import POSTGRES_SETTINGS, Server, StackError, local_url  # noqa: E402
from .credentials import new_password  # noqa: E402
from .procs import Guardian, free_port  # noqa: E402

# Official images, the same defaults as compose/infra.yaml.
IMAGES = {
    "kafka": "apache/kafka:3.9.1",
    "postgres": "postgres:17",
    "redis": "redis:7",
    "rabbitmq": "rabbitmq:3-management",
}
LABEL = {"labkit": "1"}
NETWORK_MODES = ("host", "bridge")


def image(kind: str) -> str:
    return os.environ.get(f"LABKIT_IMAGE_{kind.upper()}", IMAGES[kind])


def network_mode() -> str:
    """LABKIT_DOCKER_NETWORK, else host when the daemon has no bridge network (CI), else bridge."""
    mode = os.environ.get("LABKIT_DOCKER_NETWORK")
    if mode:
        if mode not in NETWORK_MODES:
            raise StackError(f"LABKIT_DOCKER_NETWORK={mode!r}: use 'host' or 'bridge'")
        return mode
    import docker

    try:
        client = docker.from_env(timeout=10)
        try:
            return "bridge" if any(n.name == "bridge" for n in client.networks.list()) else "host"
        finally:
            client.close()
    except docker.errors.DockerException as e:
        raise StackError(f"the docker runtime needs a Docker daemon that answers: {e}") from None


class _NotReady(Exception):
    """A readiness probe failed the way a starting server fails; keep polling."""


class DockerServer(Server):
    container_port: ClassVar[int]  # where the official image listens (bridge mode)
    has_password: ClassVar[bool] = False  # an admin password of its own (see credentials.py)

    def __init__(self, network: str) -> None:
        self.network = network
        self.port = 0  # on 127.0.0.1 of the host, in both modes
        self.container: DockerContainer | None = None
        self.container_id = ""
        self.password = new_password() if self.has_password else None

    @property
    def url(self) -> str:
        return local_url(self.kind, self.port, self.password)

    @property
    def host_network(self) -> bool:
        return self.network == "host"

    @property
    def listen_port(self) -> int:
        """The port the server listens on inside its container."""
        return self.port if self.host_network else self.container_port

    def configure(self, container: DockerContainer) -> DockerContainer:
        """Add the kind's env and command; called with self.port chosen."""
        raise NotImplementedError

    def start(self, timeout: float) -> None:
        self.port = free_port()
        name = f"labkit-{self.kind}-{self.port}-{secrets.token_hex(2)}"  # readable in `docker ps`
        container = DockerContainer(image(self.kind)).with_name(name)
        if self.host_network:
            container.with_kwargs(network_mode="host", labels=LABEL)
        else:
            container.with_kwargs(labels=LABEL).with_bind_ports(self.container_port, ("127.0.0.1", self.port))  # docker-py: (ip, port)
        self.container = self.configure(container)
        try:
            self.container.start()
        except Exception as e:  # image missing, daemon refusing, name taken: say which server
            self.stop()
            raise StackError(f"{self.kind}: could not start a container from {image(self.kind)}: {e}") from None
        self.container_id = self.container.get_wrapped_container().id
        Guardian.get().watch_container(self.container_id)  # removed even if this process is killed
        self._wait_ready(timeout)

    def _wrapped(self):
        if self.container is None:
            raise StackError(f"{self.kind}: not started")
        return self.container.get_wrapped_container()

    def _wait_ready(self, timeout: float) -> None:
        def ready() -> bool:
            wrapped = self._wrapped()
            wrapped.reload()
            if wrapped.status in ("exited", "dead"):  # fail now, not at the timeout
                raise StackError(f"{self.kind} container {wrapped.status} (exit code {wrapped.attrs['State']['ExitCode']})")
            try:
                return probes.probe(self.kind, self.url)
            except Exception as e:  # refused, reset, still starting: not yet
                raise _NotReady(e) from e

        try:
            wait_until(ready, timeout, f"{self.kind} in container {image(self.kind)}", ignore=(_NotReady,))
        except (WaitTimeout, StackError) as e:
            logs = self.logs()
            self.stop()
            raise StackError(f"{e}\n--- {self.kind} container log ---\n{logs}") from None

    def logs(self, lines: int = 20) -> str:
        try:
            return self._wrapped().logs(tail=lines).decode(errors="replace")
        except Exception:
            return "(no log)"

    def stop(self) -> None:
        if self.container is not None:
            try:
                self.container.stop()  # docker rm -f -v: the container and its anonymous volumes
            except Exception:
                pass  # already gone
            self.container = None
            if self.container_id:
                Guardian.get().forget_container(self.container_id)
                self.container_id = ""

    def pids(self) -> list[int]:
        """The container's main process as the host sees it (0 while it is not running)."""
        wrapped = self._wrapped()
        wrapped.reload()
        pid = wrapped.attrs["State"]["Pid"]
        return [pid] if pid else []

    # Faults, the Docker way. The container and its files stay, so a restart keeps the data
    # (PostgreSQL's, RabbitMQ's durable queues; Tansu keeps its data in memory and loses it).
    def kill(self) -> None:
        """docker kill: SIGKILL to the server."""
        self._wrapped().kill()

    def restart(self, timeout: float = 60, mode: str | None = None) -> None:
        """docker restart (stops it first if it runs), then wait until it answers again;
        with a mode (see shut_down), that shutdown, then docker start."""
        if mode is not None:
            self.shut_down(mode)
            self.start_again(timeout)
            return
        self._wrapped().restart(timeout=5)
        self._wait_ready(timeout)

    # Restarts as faults (grader/nemesis). The container's files stay; `durable` says whether
    # the server keeps its data in them.
    restartable = True
    durable = True
    fast_signal = "SIGTERM"  # a clean shutdown
    immediate_signal = "SIGKILL"  # no clean shutdown; PostgreSQL has its own

    def shut_down(self, mode: str = "kill") -> None:
        """kill: SIGKILL; immediate: no clean shutdown; fast: a clean one. Returns once the
        container has stopped (SIGKILL after 30 s)."""
        sig = {"kill": "SIGKILL", "immediate": self.immediate_signal, "fast": self.fast_signal}[mode]
        wrapped = self._wrapped()
        wrapped.kill(signal=sig)

        def stopped() -> bool:
            wrapped.reload()
            return wrapped.status in ("exited", "dead")

        try:
            wait_until(stopped, 30, f"{self.kind} container to stop after {sig}")
        except WaitTimeout:
            wrapped.kill()
            wait_until(stopped, 30, f"{self.kind} container to stop after SIGKILL")

    def start_again(self, timeout: float = 60) -> None:
        """docker start after shut_down; ready when it answers a real request."""
        self._wrapped().start()
        self._wait_ready(timeout)

    def pause(self) -> None:
        """docker pause: freeze every process; connections stay open but nothing answers."""
        self._wrapped().pause()

    def unpause(self) -> None:
        self._wrapped().unpause()


class DockerKafka(DockerServer):
    kind = "kafka"
    container_port = 9092
    advertised_port: int | None = None  # as NativeKafka: set to route clients through a fault proxy

    @property
    def durable(self) -> bool:  # type: ignore[override]
        """apache/kafka keeps its log in the container; the CI image (Tansu) keeps it in memory."""
        return not any(name in image(self.kind) for name in ("labkit/kafka", "tansu"))


    def configure(self, c: DockerContainer) -> DockerContainer:
        host = "127.0.0.1" if self.host_network else "0.0.0.0"
        controller = free_port() if self.host_network else 9093
        # Official apache/kafka (KRaft, one node) reads all of these; labkit/kafka (Tansu) the first two.
        env = {
            "KAFKA_LISTENERS": f"PLAINTEXT://{host}:{self.listen_port},CONTROLLER://{host}:{controller}",
            "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://127.0.0.1:{self.advertised_port or self.port}",
            "KAFKA_NODE_ID": "1",
            "KAFKA_PROCESS_ROLES": "broker,controller",
            "KAFKA_CONTROLLER_QUORUM_VOTERS": f"1@127.0.0.1:{controller}",
            "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
            "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
            "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        }
        for key, value in env.items():
            c.with_env(key, value)
        return c


class DockerPostgres(DockerServer):
    kind = "postgres"
    container_port = 5432
    has_password = True
    fast_signal = "SIGINT"  # PostgreSQL's fast shutdown (SIGTERM would wait for every session)
    immediate_signal = "SIGQUIT"  # immediate shutdown: crash recovery at start


    def configure(self, c: DockerContainer) -> DockerContainer:
        # PGPORT too: the official entrypoint's init steps use it.
        command = ["postgres", "-p", str(self.listen_port), *POSTGRES_SETTINGS]
        if self.host_network:
            command += ["-c", "listen_addresses=127.0.0.1"]
        # The official image then demands the password on TCP (scram); labkit's CI image keeps its
        # own pg_hba (trust), where the password is accepted and ignored.
        return (c.with_env("POSTGRES_PASSWORD", self.password).with_env("POSTGRES_HOST_AUTH_METHOD", "scram-sha-256")
                .with_env("PGPORT", str(self.listen_port)).with_command(command))


class DockerRedis(DockerServer):
    kind = "redis"
    container_port = 6379
    has_password = True
    durable = False  # started without RDB or AOF


    def configure(self, c: DockerContainer) -> DockerContainer:
        command = ["redis-server", "--port", str(self.listen_port), "--save", "", "--appendonly", "no",
                   "--protected-mode", "no", "--requirepass", self.password]
        if self.host_network:
            command += ["--bind", "127.0.0.1"]
        return c.with_command(command)


class DockerRabbitMQ(DockerServer):
    kind = "rabbitmq"
    container_port = 5672


    def inspect(self, *args: str, timeout: float = 60) -> str:
        """rabbitmqctl inside the container (the image's own, its node and cookie): the grader's
        reads of channels, consumers and connections. Read-only use: definitions are not imported
        this way (their file is on the host), so services keep the admin URL here."""
        code, out = self._wrapped().exec_run(["rabbitmqctl", *args])
        text = out.decode(errors="replace") if isinstance(out, bytes) else str(out)
        if code != 0:
            raise StackError(f"rabbitmqctl {' '.join(args)} failed in the container ({code}):\n{text[-2000:]}")
        return text

    def configure(self, c: DockerContainer) -> DockerContainer:
        c.with_env("RABBITMQ_NODE_PORT", str(self.listen_port))
        if self.host_network:  # loopback only, like every other server (bridge mode publishes on 127.0.0.1)
            c.with_env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1").with_env("ERL_EPMD_ADDRESS", "127.0.0.1")
            # The host's own RabbitMQ may hold 4369/25672/15672: take private ports for epmd,
            # distribution and (official -management image) the management UI.
            c.with_env("RABBITMQ_DIST_PORT", str(free_port())).with_env("ERL_EPMD_PORT", str(free_port()))
            c.with_env("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", f"-rabbitmq_management tcp_config [{{port,{free_port()}}}]")
        return c


SERVERS: dict[str, type[DockerServer]] = {
    cls.kind: cls for cls in (DockerKafka, DockerPostgres, DockerRedis, DockerRabbitMQ)
}


def docker_servers(kinds: list[str]) -> dict[str, Server]:
    """One not-yet-started container server per kind, all in the same network mode."""
    mode = network_mode()
    return {kind: SERVERS[kind](mode) for kind in kinds}
