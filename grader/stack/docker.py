"""The docker runtime: each server a container, started with testcontainers-python.

Two network modes:
- bridge (Docker's default on a laptop): the container's port is published on a free host port;
- host (LABKIT_DOCKER_NETWORK=host, or automatic when the daemon has no bridge network, as in CI):
  the container shares the host's network and listens on a free port on 127.0.0.1. Testcontainers'
  port lookups do not work there, so this runtime picks and reports 127.0.0.1:<port> itself.
Images come from LABKIT_IMAGE_<KIND> (official images by default), so CI and offline workshops can
use locally built ones. Ryuk is off (its image cannot be pulled everywhere): containers carry the
label labkit=1 and are removed by stop(), or by `.ci/docker.sh cleanup`.
"""
from __future__ import annotations

import os
from typing import ClassVar

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

from testcontainers.core.container import DockerContainer  # noqa: E402

from ..wait import WaitTimeout, wait_until  # noqa: E402
from . import probes  # noqa: E402
from .base import Server, StackError  # noqa: E402
from .procs import Guardian, free_port  # noqa: E402

IMAGES = {
    "kafka": "apache/kafka:3.9.1",
    "postgres": "postgres:17",
    "redis": "redis:7",
    "rabbitmq": "rabbitmq:3-management",
}
LABEL = {"labkit": "1"}


def image(kind: str) -> str:
    return os.environ.get(f"LABKIT_IMAGE_{kind.upper()}", IMAGES[kind])


def network_mode() -> str:
    mode = os.environ.get("LABKIT_DOCKER_NETWORK")
    if mode:
        return mode
    import docker

    client = docker.from_env()
    try:
        return "bridge" if any(n.name == "bridge" for n in client.networks.list()) else "host"
    finally:
        client.close()


class DockerServer(Server):
    container_port: ClassVar[int]

    def __init__(self, network: str) -> None:
        self.network = network
        self.port = 0
        self.container: DockerContainer | None = None
        self.container_id = ""

    @property
    def host_network(self) -> bool:
        return self.network == "host"

    @property
    def listen_port(self) -> int:
        """The port the server listens on inside its container."""
        return self.port if self.host_network else self.container_port

    def configure(self, container: DockerContainer) -> DockerContainer:
        raise NotImplementedError

    def start(self, timeout: float) -> None:
        self.port = free_port()
        container = DockerContainer(image(self.kind))
        if self.host_network:
            container.with_kwargs(network_mode="host", labels=LABEL)
        else:
            container.with_kwargs(labels=LABEL).with_bind_ports(self.container_port, self.port)
        self.container = self.configure(container)
        try:
            self.container.start()
        except Exception as e:  # image missing, daemon refusing, port taken: say which server
            self.stop()
            raise StackError(f"{self.kind}: could not start a container from {image(self.kind)}: {e}") from None
        self.container_id = self.container.get_wrapped_container().id
        Guardian.get().watch_container(self.container_id)  # removed even if this process is killed
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        def ready() -> bool:
            wrapped = self.container.get_wrapped_container()
            wrapped.reload()
            if wrapped.status == "exited":
                raise StackError(f"{self.kind} container exited:\n{self.logs()}")
            return probes.probe(self.kind, self.url)

        try:
            wait_until(ready, timeout, f"{self.kind} in container {image(self.kind)}", ignore=(Exception,))
        except (WaitTimeout, StackError) as e:
            logs = self.logs()
            self.stop()
            raise StackError(f"{e}\n--- {self.kind} container log ---\n{logs}") from None

    def logs(self, lines: int = 20) -> str:
        try:
            out = self.container.get_wrapped_container().logs(tail=lines)
            return out.decode(errors="replace")
        except Exception:
            return "(no log)"

    def stop(self) -> None:
        if self.container is not None:
            try:
                self.container.stop()  # removes the container and its anonymous volumes
            except Exception:
                pass
            self.container = None
            Guardian.get().forget_container(self.container_id)

    def pids(self) -> list[int]:
        if self.container is None:
            return []
        wrapped = self.container.get_wrapped_container()
        wrapped.reload()
        pid = wrapped.attrs["State"]["Pid"]
        return [pid] if pid else []

    def kill(self) -> None:
        """docker kill: SIGKILL to the server; the container (and its files) stays."""
        self.container.get_wrapped_container().kill()

    def restart(self, timeout: float = 60) -> None:
        self.container.get_wrapped_container().restart(timeout=5)
        self._wait_ready(timeout)


class DockerKafka(DockerServer):
    kind = "kafka"
    container_port = 9092
    advertised_port: int | None = None  # see NativeKafka: set to route clients through a fault proxy

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def configure(self, c: DockerContainer) -> DockerContainer:
        host = "127.0.0.1" if self.host_network else "0.0.0.0"
        controller = free_port() if self.host_network else 9093
        # Official apache/kafka (KRaft, one node) reads these; labkit/kafka (Tansu) the first two.
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

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def configure(self, c: DockerContainer) -> DockerContainer:
        command = ["postgres", "-p", str(self.listen_port), "-c", "wal_level=logical", "-c", "fsync=off",
                   "-c", "max_replication_slots=20", "-c", "max_wal_senders=20", "-c", "max_connections=200"]
        if self.host_network:
            command += ["-c", "listen_addresses=127.0.0.1"]
        return c.with_env("POSTGRES_HOST_AUTH_METHOD", "trust").with_command(command)


class DockerRedis(DockerServer):
    kind = "redis"
    container_port = 6379

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def configure(self, c: DockerContainer) -> DockerContainer:
        command = ["redis-server", "--port", str(self.listen_port), "--save", "", "--appendonly", "no",
                   "--protected-mode", "no"]
        if self.host_network:
            command += ["--bind", "127.0.0.1"]
        return c.with_command(command)


class DockerRabbitMQ(DockerServer):
    kind = "rabbitmq"
    container_port = 5672

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def configure(self, c: DockerContainer) -> DockerContainer:
        c.with_env("RABBITMQ_NODE_PORT", str(self.listen_port))
        if self.host_network:  # the host's own RabbitMQ may hold 4369/25672: take private ones
            c.with_env("RABBITMQ_DIST_PORT", str(free_port())).with_env("ERL_EPMD_PORT", str(free_port()))
        return c


SERVERS: dict[str, type[DockerServer]] = {
    cls.kind: cls for cls in (DockerKafka, DockerPostgres, DockerRedis, DockerRabbitMQ)
}


def docker_servers(kinds: list[str]) -> dict[str, Server]:
    mode = network_mode()
    if mode not in ("host", "bridge"):
        raise StackError(f"LABKIT_DOCKER_NETWORK={mode!r}: use 'host' or 'bridge'")
    return {kind: SERVERS[kind](mode) for kind in kinds}
