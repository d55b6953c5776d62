"""Faults inside RabbitMQ itself (the network faults go through the proxy: network.py)."""
from __future__ import annotations

import time

import pika

from .base import Fault, Need, Target


class Unroutable(Fault):
    """Unbind a queue from its exchange for `seconds`, then bind it again: every message published
    meanwhile matches no queue. A `mandatory` publisher gets it back (basic.return, then its
    confirm); without mandatory the broker drops it silently - and a publisher that answered its
    client before the broker's confirm has acknowledged a payment that exists nowhere.

    Probes the publisher's side of at-least-once: confirms, mandatory and the returned-message
    handler. A service that declares its topology on every (re)connect binds the queue again, so the
    binding is removed again every `every` seconds while the fault holds (it must not depend on the
    services staying connected). Effective when the binding was removed and restored.
    """

    kind = "unroutable"

    def __init__(self, exchange: str, queue: str, routing_key: str, seconds: float = 3.0, every: float = 0.02,
                 url_of=lambda run: run.ns.service_url("rabbitmq")) -> None:
        super().__init__("rabbitmq")
        self.exchange, self.queue, self.routing_key, self.seconds = exchange, queue, routing_key, seconds
        self.every = every
        self._url_of = url_of
        self._unbound = False

    def needs(self) -> list[Need]:
        return [Need("server", "rabbitmq")]

    def _channel_do(self, run: Target, action: str) -> None:
        params = pika.URLParameters(self._url_of(run))
        params.socket_timeout = 5
        with pika.BlockingConnection(params) as conn:
            getattr(conn.channel(), action)(self.queue, self.exchange, routing_key=self.routing_key)

    def inject(self, run: Target) -> None:
        self._channel_do(run, "queue_unbind")
        self._unbound = True
        self._t0 = time.monotonic()

    def hold(self, run: Target) -> None:
        deadline, unbinds = self._t0 + self.seconds, 1
        params = pika.URLParameters(self._url_of(run))
        params.socket_timeout = 5
        with pika.BlockingConnection(params) as conn:
            channel = conn.channel()
            while (left := deadline - time.monotonic()) > 0:
                conn.sleep(min(self.every, left))
                channel.queue_unbind(self.queue, self.exchange, routing_key=self.routing_key)
                unbinds += 1
        self.detail["unbinds"] = unbinds

    def heal(self, run: Target) -> None:
        if self._unbound:
            self._channel_do(run, "queue_bind")
            self.detail["unbound_seconds"] = round(time.monotonic() - self._t0, 2)
            self.effective = True
            self._unbound = False

    def describe(self) -> str:
        return (f"unbind queue {self.queue} from exchange {self.exchange} for {self.seconds:g} s "
                f"(publishes meanwhile are unroutable)")
