"""Publisher with confirms (lab 4 reference): a payment is accepted only once RabbitMQ has it.

One connection, owned by a background thread running pika's asynchronous SelectConnection; HTTP
handler threads hand messages to it and wait for the broker's answer:
- the channel is in confirm mode: each publish gets a delivery tag, and the broker answers
  basic.ack (stored - for a quorum queue on a majority, for a persistent message on disk) or
  basic.nack (not stored). Confirms are asynchronous, so many publishes are in flight at once and
  one ack with multiple=True confirms a batch;
- mandatory=True: a message no queue is bound for comes back as basic.return (then basic.ack!).
  Without mandatory it is silently dropped - so a returned message counts as failed;
- persistent messages (delivery_mode=2);
- a lost connection: every message not yet confirmed is published again on the next connection
  (the broker may have stored it already: the worker's idempotency absorbs the duplicate). A
  caller that gave up waiting is not re-sent.
"""
from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field

import pika
from pika.spec import Basic

from services.common import amqp
from services.common.log import get_logger

log = get_logger("payments_api")


class PublishError(RuntimeError):
    """The broker did not confirm the message (nack, returned, no connection, timeout)."""


@dataclass
class Pending:
    body: bytes
    headers: dict
    message_id: str
    publish_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    done: threading.Event = field(default_factory=threading.Event)
    error: str = ""
    returned: bool = False
    abandoned: bool = False


class ConfirmingPublisher:
    def __init__(self, exchange: str, routing_key: str) -> None:
        self.exchange, self.routing_key = exchange, routing_key
        self._lock = threading.Lock()
        self._unsent: list[Pending] = []  # waiting for a channel (first send, or after a lost connection)
        self._in_flight: dict[int, Pending] = {}  # delivery tag -> sent, not yet confirmed
        self._tag = 0
        self._conn: pika.SelectConnection | None = None
        self._channel = None
        self._ready = False
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="amqp-publisher", daemon=True)
        self._thread.start()

    # --- called from any thread ---
    def publish(self, body: bytes, headers: dict, message_id: str, timeout: float = 8.0) -> None:
        """Returns once the broker confirmed the message; raises PublishError otherwise."""
        p = Pending(body, headers, message_id)
        with self._lock:
            self._unsent.append(p)
        self._wake()
        if not p.done.wait(timeout):
            p.abandoned = True
            raise PublishError(f"no confirm within {timeout:g} s")
        if p.error:
            raise PublishError(p.error)

    def close(self) -> None:
        self._closing.set()
        conn = self._conn
        if conn is not None:
            try:
                conn.ioloop.add_callback_threadsafe(self._close_now)
            except Exception:
                pass
        self._thread.join(10)

    def _wake(self) -> None:
        conn = self._conn
        if conn is not None and self._ready:
            try:
                conn.ioloop.add_callback_threadsafe(self._flush)
            except Exception:  # the loop is gone: the next connection flushes
                pass

    # --- the connection's thread ---
    def _run(self) -> None:
        while not self._closing.is_set():
            try:
                self._conn = pika.SelectConnection(amqp.parameters(), on_open_callback=self._on_open,
                                                   on_open_error_callback=self._on_open_error,
                                                   on_close_callback=self._on_closed)
                self._conn.ioloop.start()
            except Exception as e:  # never let the publisher thread die
                log.warning("publisher connection failed: %s", e)
            self._ready = False
            self._closing.wait(0.5)  # back-off before reconnecting

    def _on_open(self, conn) -> None:
        conn.channel(on_open_callback=self._on_channel)

    def _on_open_error(self, conn, error) -> None:
        log.warning("cannot connect to RabbitMQ: %s", error)
        conn.ioloop.stop()

    def _on_channel(self, channel) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.exchange_declare(self.exchange, exchange_type="direct", durable=True,
                                 callback=lambda _: channel.confirm_delivery(self._on_confirm,
                                                                            callback=self._on_confirm_mode))

    def _on_confirm_mode(self, _frame) -> None:
        self._tag = 0
        self._ready = True
        log.info("publisher ready: confirms on, mandatory, persistent")
        self._flush()

    def _flush(self) -> None:
        if not self._ready or self._channel is None or not self._channel.is_open:
            return
        with self._lock:
            batch, self._unsent = [p for p in self._unsent if not p.abandoned and not p.done.is_set()], []
        for p in batch:
            self._tag += 1
            self._in_flight[self._tag] = p
            p.returned = False
            self._channel.basic_publish(
                self.exchange, self.routing_key, p.body, mandatory=True,
                properties=pika.BasicProperties(delivery_mode=2, content_type="application/json",
                                                message_id=p.message_id, correlation_id=p.publish_id,
                                                headers=p.headers))

    def _on_return(self, _channel, _method, properties, _body) -> None:
        for p in self._in_flight.values():  # the return comes before that message's ack
            if p.publish_id == properties.correlation_id:
                p.returned = True

    def _on_confirm(self, frame) -> None:
        method = frame.method
        tags = ([t for t in self._in_flight if t <= method.delivery_tag] if method.multiple
                else [method.delivery_tag])
        for tag in tags:
            p = self._in_flight.pop(tag, None)
            if p is None:
                continue
            if isinstance(method, Basic.Nack):
                p.error = "the broker refused the message (nack)"
            elif p.returned:
                p.error = "unroutable: no queue bound for it (returned)"
            p.done.set()

    def _requeue_in_flight(self) -> None:
        """After a lost channel: everything sent but not confirmed goes out again on the next one."""
        with self._lock:
            again = [p for _, p in sorted(self._in_flight.items()) if not p.done.is_set()]
            self._unsent = again + self._unsent
        if again:
            log.warning("connection lost with %d unconfirmed message(s): publishing them again", len(again))
        self._in_flight.clear()

    def _on_channel_closed(self, _channel, reason) -> None:
        self._ready = False
        self._requeue_in_flight()
        if self._conn is not None and self._conn.is_open:
            log.warning("channel closed (%s): reconnecting", reason)
            self._conn.close()

    def _on_closed(self, conn, reason) -> None:
        self._ready = False
        self._requeue_in_flight()
        if not self._closing.is_set():
            log.warning("connection closed (%s): reconnecting", reason)
        conn.ioloop.stop()

    def _close_now(self) -> None:
        if self._conn is not None and self._conn.is_open:
            self._conn.close()
        elif self._conn is not None:
            self._conn.ioloop.stop()
