"""The Stack: one running set of infrastructure servers for a lab, whatever runs them.

A runtime (native, docker, external) supplies one `Server` per kind; the Stack starts them
in parallel, hands out connection URLs, and carves per-run `Namespace`s so that many runs can
share one stack without seeing each other's topics, tables, keys or queues.
"""
from __future__ import annotations

import re
import secrets
import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, ClassVar

from . import credentials
from .credentials import pinned, with_database

# The kinds of server a lab can ask for, and the env variable of the service contract
# that carries each one's URL (see DESIGN.md, "The service contract").
ENV_VARS = {
    "kafka": "KAFKA_BOOTSTRAP_SERVERS",
    "postgres": "DATABASE_URL",
    "redis": "REDIS_URL",
    "rabbitmq": "AMQP_URL",
}
KINDS = tuple(ENV_VARS)

# Every runtime exposes its servers on 127.0.0.1; the URL of a kind depends on the port and, where
# the server has one, the admin password (a fresh one per server the kit starts; see credentials.py).
LOCAL_URLS = {
    "kafka": "127.0.0.1:{port}",
    "postgres": "postgresql://postgres@127.0.0.1:{port}/postgres",
    "redis": "redis://127.0.0.1:{port}/0",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:{port}/%2F",
}
ADMIN_USERS = {"postgres": "postgres", "redis": "", "rabbitmq": "labkit"}  # redis: its default user

# PostgreSQL settings every runtime starts with. fsync off for speed, but synchronous_commit
# stays on: SQL logical decoding (pg_logical_slot_peek_changes) only sees flushed WAL.
POSTGRES_SETTINGS = ["-c", "wal_level=logical", "-c", "max_replication_slots=20", "-c", "max_wal_senders=20",
                     "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=200"]


def local_url(kind: str, port: int, password: str | None = None) -> str:
    """The admin URL of a server on 127.0.0.1:`port`; without a password, its defaults (guest, trust)."""
    url = LOCAL_URLS[kind].format(port=port)
    return credentials.with_credentials(url, ADMIN_USERS[kind], password) if password else url


class StackError(RuntimeError):
    """A server could not be started, reached or stopped; the message says which and why."""


class MissingDependency(StackError):
    """Something a runtime needs is not installed; `install` says how to get it."""

    def __init__(self, what: str, install: str):
        super().__init__(f"{what} not found: {install}")
        self.what = what
        self.install = install


class Server(ABC):
    """One infrastructure server. Subclasses are small: how to start, probe and stop it."""

    kind: ClassVar[str]

    started_in: float | None = None  # seconds the last start took, for reports

    @abstractmethod
    def start(self, timeout: float) -> None:
        """Start and block until the server answers a real request (or raise StackError)."""

    @abstractmethod
    def stop(self) -> None:
        """Stop and release everything (processes, containers, temp dirs). Idempotent."""

    @property
    @abstractmethod
    def url(self) -> str:
        """Connection URL in the form the service contract uses for this kind."""

    def pids(self) -> list[int]:
        """Host PIDs of this server's processes (empty where the runtime has none)."""
        return []

    # Faults. Runtimes that cannot inject one say so instead of pretending.
    def kill(self) -> None:
        raise StackError(f"{type(self).__name__} cannot be killed by the grader")

    def restart(self, timeout: float = 60) -> None:
        self.kill()
        self.start(timeout)


_NAME_OK = re.compile(r"^[a-z][a-z0-9_]{0,40}$")


@dataclass
class Namespace:
    """One run's private corner of a shared stack.

    Kafka topics, consumer groups and queues are prefixed with `name.`, Redis keys with
    `name:`, and PostgreSQL gets a database of its own, so dropping a run is cheap and total.
    Each run also gets credentials of its own (credentials.py): a PostgreSQL role owning that
    database, a Redis ACL user limited to `name:*`, a RabbitMQ user on vhost `name`. `env()` hands
    those to the run's services. The grader reads the run's data as the run's reader (`reader_url`,
    `reader_url_for`: this run only, read-only), makes its faults in the run's tables as the run's
    own role (`owner_url`), and keeps the admin URLs (`Stack.url`) for managing the servers.
    """

    name: str
    stack: "Stack"
    password: str = field(default_factory=lambda: credentials.new_password(), repr=False)
    reader_password: str = field(default_factory=lambda: credentials.new_password(), repr=False)
    service_urls: dict[str, str] = field(default_factory=dict, repr=False)  # kind -> URL with own creds
    reader_urls: dict[str, str] = field(default_factory=dict, repr=False)  # kind -> the grader's reader URL

    def topic(self, base: str) -> str:
        return f"{self.name}.{base}"

    queue = topic
    group = topic

    def key(self, base: str) -> str:
        return f"{self.name}:{base}"

    @property
    def reader_url(self) -> str:
        """The grader's URL of this run's database for its observations: the run's reader role (no
        rights but reading this run's tables; search_path pinned to pg_catalog). Every statement
        through it names its schema (`public.orders`): the submission owns the database."""
        return self.reader_url_for("postgres")

    @property
    def owner_url(self) -> str:
        """The run's own role (owner of its tables), search_path pinned: for the grader's faults
        that install triggers or hold locks on those tables. Never more than the submission has."""
        return pinned(self.service_url("postgres"))

    def reader_url_for(self, kind: str) -> str:
        """The URL the grader reads this run's data of `kind` with: its per-run reader where the
        server has one (PostgreSQL, Redis with ACLs), else the admin's."""
        if kind in self.reader_urls:
            return self.reader_urls[kind]
        if kind == "postgres":
            return pinned(with_database(self.stack.url("postgres"), self.name))
        return self.stack.url(kind)

    def service_url(self, kind: str) -> str:
        """The URL this run's services get for `kind`: their own credentials where the server has them."""
        if kind in self.service_urls:
            return self.service_urls[kind]
        if kind == "postgres":
            return with_database(self.stack.url("postgres"), self.name)
        return self.stack.url(kind)

    def env(self) -> dict[str, str]:
        """The service-contract variables for a process that belongs to this run."""
        env = {ENV_VARS[kind]: self.service_url(kind) for kind in self.stack.servers}
        env["LAB_NAMESPACE"] = self.name
        return env

    def provision(self) -> "Namespace":
        for kind, server in self.stack.servers.items():
            url, reader = credentials.provision(kind, server, self.name, self.password, self.reader_password)
            if url:
                self.service_urls[kind] = url
            if reader:
                self.reader_urls[kind] = reader
        return self

    def drop(self) -> None:
        """Remove what this run created: its database (and replication slots in it), keys, vhost, users."""
        for kind, server in self.stack.servers.items():
            credentials.drop(kind, server, self.name)
        self.service_urls.clear()
        self.reader_urls.clear()


def new_namespace_name(prefix: str = "run") -> str:
    name = f"{re.sub(r'[^a-z0-9]', '', prefix.lower()) or 'run'}_{secrets.token_hex(3)}"
    return name


Progress = Callable[[str, str, float | None], None]  # (server kind, "starting"|"ready"|"failed", seconds)


@dataclass
class Stack:
    """Servers of one runtime, started together. Use as a context manager."""

    runtime: str
    servers: dict[str, Server]
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    started_in: float | None = None

    def start(self, timeout: float = 120, progress: Progress | None = None) -> "Stack":
        progress = progress or (lambda *a: None)
        t0 = time.monotonic()

        def start_one(server: Server) -> None:
            progress(server.kind, "starting", None)
            s0 = time.monotonic()
            try:
                server.start(timeout)
            except BaseException:
                progress(server.kind, "failed", time.monotonic() - s0)
                raise
            server.started_in = time.monotonic() - s0
            progress(server.kind, "ready", server.started_in)

        with ThreadPoolExecutor(max_workers=max(1, len(self.servers))) as pool:
            futures = [pool.submit(start_one, s) for s in self.servers.values()]
            errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            self.stop()
            if len(errors) == 1:
                raise errors[0]
            raise StackError("; ".join(str(e) for e in errors))
        self.started_in = time.monotonic() - t0
        return self

    def stop(self) -> None:
        with ThreadPoolExecutor(max_workers=max(1, len(self.servers))) as pool:
            list(pool.map(lambda s: s.stop(), self.servers.values()))

    def __enter__(self) -> "Stack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def url(self, kind: str) -> str:
        try:
            return self.servers[kind].url
        except KeyError:
            raise StackError(f"this stack has no {kind} (it has: {', '.join(self.servers) or 'nothing'})") from None

    def env(self) -> dict[str, str]:
        return {ENV_VARS[kind]: server.url for kind, server in self.servers.items()}

    def namespace(self, name: str | None = None, prefix: str = "run") -> Namespace:
        name = name or new_namespace_name(prefix)
        if not _NAME_OK.match(name):
            raise ValueError(f"namespace {name!r}: use lowercase letters, digits and _ (start with a letter)")
        return Namespace(name, self).provision()
