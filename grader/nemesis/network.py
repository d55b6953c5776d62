"""Faults on the path between the services and a server, through the run's TCP proxy for that kind
(`run.proxies[kind]`): cut, one-way cut, delay, reset. The grader's own clients use direct URLs -
except Kafka's, which follow the broker's advertised address, the proxy (a Kafka cut cuts the
grader's Kafka clients too; read topics after the heal).

Applied on their own they last `seconds`; as context managers, the caller's block.
`Cut("postgres")` / `ResetConnections("postgres")` are the PostgreSQL connection cuts.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .base import Fault, Need, Target

if TYPE_CHECKING:
    from .proxy import TcpProxy


class ProxyFault(Fault):
    def __init__(self, kind: str, seconds: float = 5.0) -> None:
        super().__init__(kind)
        self.seconds = seconds

    def needs(self) -> list[Need]:
        return [Need("proxy", self.target)]

    def proxy(self, run: Target) -> "TcpProxy":
        return run.proxies[self.target]

    def hold(self, run: Target) -> None:
        time.sleep(self.seconds)


class Cut(ProxyFault):
    """A partition between the services and a server: open connections reset, new ones refused.

    Probes what a service does when its dependency is unreachable: does an API answer an error
    (and not 2xx) when the broker cannot take the record, does a consumer retry its database write
    or dead-letter / drop the record, does everything reconnect after the heal.
    Effective if a connection was reset or refused.
    """

    kind = "cut"

    def inject(self, run: Target) -> None:
        proxy = self.proxy(run)
        self._refused_before = proxy.refused
        self.detail["reset"] = proxy.cut()

    def heal(self, run: Target) -> None:
        proxy = self.proxy(run)
        proxy.heal()
        self.detail["refused"] = proxy.refused - getattr(self, "_refused_before", proxy.refused)
        self.effective = bool(self.detail.get("reset") or self.detail["refused"])

    def describe(self) -> str:
        return f"cut the services off from {self.target} (connections reset, new ones refused)"


class OneWayCut(ProxyFault):
    """Requests reach the server, its responses are dropped: the effect happens, the client never
    hears back (a lost acknowledgement). At the heal, connections that lost responses are reset.

    Probes indeterminate outcomes: a Kafka producer's record is stored while its delivery report
    is an error; what does the service answer its own client, and what does its retry publish
    (a duplicate, unless idempotent)? Effective if any response bytes were dropped.
    """

    kind = "one-way-cut"

    def inject(self, run: Target) -> None:
        proxy = self.proxy(run)
        self._dropped_before = proxy.dropped_down
        proxy.cut_responses()

    def heal(self, run: Target) -> None:
        proxy = self.proxy(run)
        self.detail["reset"] = proxy.heal()
        self.detail["dropped_bytes"] = proxy.dropped_down - getattr(self, "_dropped_before", proxy.dropped_down)
        self.effective = self.detail["dropped_bytes"] > 0

    def describe(self) -> str:
        return f"drop every response from {self.target} to the services (their requests still arrive)"


class Delay(ProxyFault):
    """Added latency each way on the path to a server.

    Probes timeouts and concurrency: requests that stay in progress longer overlap with retries
    and with other requests for the same key. Effective if bytes went through while delayed.
    """

    kind = "delay"

    def __init__(self, kind: str, ms: int, seconds: float = 5.0) -> None:
        super().__init__(kind, seconds)
        self.ms = ms

    def inject(self, run: Target) -> None:
        proxy = self.proxy(run)
        self._bytes_before = proxy.bytes_up + proxy.bytes_down
        proxy.delay(self.ms)
        self.detail["ms"] = self.ms

    def heal(self, run: Target) -> None:
        proxy = self.proxy(run)
        proxy.delay(0)
        moved = proxy.bytes_up + proxy.bytes_down - getattr(self, "_bytes_before", proxy.bytes_up + proxy.bytes_down)
        self.detail["bytes_delayed"] = moved
        self.effective = moved > 0

    def describe(self) -> str:
        return f"delay traffic between the services and {self.target} by {self.ms} ms each way"


class ResetConnections(ProxyFault):
    """One shot: reset (TCP RST) every open connection to a server; new ones are accepted.

    Probes reconnection: a connection pool holding dead connections, a consumer or producer that
    must re-establish its session, an error mid-transaction that must not lose the work.
    Effective if a connection was reset.
    """

    kind = "reset"

    def __init__(self, kind: str) -> None:
        super().__init__(kind, seconds=0.0)

    def inject(self, run: Target) -> None:
        self.detail["reset"] = self.proxy(run).reset()
        self.effective = self.detail["reset"] > 0

    def hold(self, run: Target) -> None:
        pass

    def heal(self, run: Target) -> None:
        pass

    def describe(self) -> str:
        return f"reset every open connection from the services to {self.target}"
