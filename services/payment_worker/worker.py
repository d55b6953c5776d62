"""Payment worker (lab 4 reference): charges each payment once, whatever is redelivered.

- manual acks, and an ack only after the charge is recorded: a crash before the ack means a
  redelivery (at least once), never a lost payment;
- prefetch (basic_qos): at most PREFETCH unacknowledged deliveries on this channel - the broker's
  backpressure, and the bound on what a crash hands back;
- pika's connection is not thread-safe and its heartbeats are answered only while the I/O thread
  runs (process_data_events). So the work runs on a thread pool and the I/O thread never blocks;
  a finished job asks the I/O thread to settle the delivery (connection.add_callback_threadsafe):
  a job longer than two heartbeat intervals does not cost the connection;
- a transient failure (the gateway answered 503 or timed out) is re-published to
  payments.retry.N, whose TTL brings it back after 1 s, 2 s, 4 s; after MAX_ATTEMPTS, or at once
  for a permanent failure (422: a poison message), basic_reject(requeue=False) sends it to the
  dead-letter queue (the work queue's dead-letter exchange), with an x-death header;
- the charge is idempotent: one row per payment id (PRIMARY KEY). A delivery whose payment is
  already charged is acked without charging again; the gateway gets the payment id as its
  Idempotency-Key, so a crash between its approval and our commit does not charge twice there.
"""
from __future__ import annotations

import functools
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pika
import psycopg
from opentelemetry import trace
from psycopg_pool import ConnectionPool

from services.common import amqp
from services.common.config import env
from services.common.lifecycle import install_signal_handlers, stopping
from services.common.log import get_logger
from services.common.telemetry import setup as setup_telemetry

log = get_logger("payment_worker")

SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    payment_id   text PRIMARY KEY,          -- at most one charge per payment
    account      text NOT NULL,
    amount_cents bigint NOT NULL,
    charge_id    text NOT NULL,             -- the gateway's id
    attempts     int NOT NULL,
    charged_at   timestamptz NOT NULL DEFAULT now()
);
"""

DONE, RETRY, DEAD = "done", "retry", "dead"


class Transient(Exception):
    """Worth another attempt later (the gateway is unavailable, timed out)."""


class Permanent(Exception):
    """No attempt will ever succeed (the gateway refused the payment): a poison message."""


class Gateway:
    """The payment gateway at PAYMENT_GATEWAY_URL (the grader runs one); without one, approve."""

    def __init__(self) -> None:
        self.url = os.environ.get("PAYMENT_GATEWAY_URL", "")
        self.client = httpx.Client(timeout=30)

    def charge(self, payment: dict) -> str:
        if not self.url:
            return f"local-{payment['payment_id']}"
        try:
            resp = self.client.post(f"{self.url}/charges", json={"payment_id": payment["payment_id"],
                                                                 "amount_cents": payment["amount_cents"]},
                                    headers={"Idempotency-Key": payment["payment_id"]})
        except httpx.HTTPError as e:
            raise Transient(f"gateway unreachable: {type(e).__name__}") from None
        if resp.status_code == 200:
            return str(resp.json()["charge_id"])
        if resp.status_code in (400, 402, 409, 422):
            raise Permanent(f"gateway refused: {resp.status_code} {resp.text[:100]}")
        raise Transient(f"gateway answered {resp.status_code}")


class PaymentWorker:
    def __init__(self) -> None:
        self.prefetch = amqp.prefetch()
        self.tracer = trace.get_tracer("payment_worker")
        self.gateway = Gateway()
        self.pool = ConnectionPool(env("DATABASE_URL"), min_size=1, max_size=self.prefetch + 1, open=False,
                                   kwargs={"autocommit": True, "connect_timeout": 10})
        self.pool.open(wait=True, timeout=30)
        with self.pool.connection() as conn:
            conn.execute(SCHEMA)
        self.jobs = ThreadPoolExecutor(self.prefetch, thread_name_prefix="job")
        self.in_flight = 0
        self._lock = threading.Lock()

    # --- the I/O thread ---
    def run(self) -> None:
        while not stopping.is_set():
            try:
                self.consume()
            except (pika.exceptions.AMQPError, OSError, ValueError) as e:
                # ValueError: pika's "Expected connected socket" when the broker goes away mid-call
                log.warning("lost RabbitMQ (%s: %s); reconnecting", type(e).__name__, e)
                stopping.wait(0.5)  # back-off; unacked deliveries come back to us or another worker
        self.jobs.shutdown(wait=True, cancel_futures=True)

    def consume(self) -> None:
        conn = pika.BlockingConnection(amqp.parameters())
        try:
            channel = conn.channel()
            amqp.declare_topology(channel)
            channel.confirm_delivery()  # a retry copy must be stored before the original is acked
            channel.basic_qos(prefetch_count=self.prefetch)
            self.subscribe(conn, channel)
            log.info("consuming %s (prefetch %d)", amqp.work_queue(), self.prefetch)
            while not stopping.is_set():
                conn.process_data_events(time_limit=0.5)
            channel.stop_consuming()
            deadline = time.monotonic() + 10  # SIGTERM: let running jobs finish and settle
            while self.in_flight and time.monotonic() < deadline:
                conn.process_data_events(time_limit=0.2)
        finally:
            if conn.is_open:
                try:
                    conn.close()
                except pika.exceptions.AMQPError:
                    pass

    def subscribe(self, conn, channel) -> None:
        channel.basic_consume(amqp.work_queue(), functools.partial(self.on_message, conn), auto_ack=False)

    def on_message(self, conn, channel, method, properties, body) -> None:
        with self._lock:
            self.in_flight += 1
        self.jobs.submit(self.job, conn, channel, method, properties, body)

    # --- a job thread ---
    def job(self, conn, channel, method, properties, body) -> None:
        try:
            outcome = self.process(method, properties, body)
        except Exception as e:  # a bug or a lost database: try again later rather than lose it
            log.exception("payment failed unexpectedly: %s", e)
            outcome = RETRY
        try:
            conn.add_callback_threadsafe(functools.partial(self.settle, channel, method, properties, body, outcome))
        except Exception:  # the connection is gone: the broker redelivers this message
            with self._lock:
                self.in_flight -= 1

    def process(self, method, properties, body) -> str:
        headers = properties.headers or {}
        attempt = int(headers.get(amqp.ATTEMPT_HEADER, 1) or 1)
        queue = amqp.work_queue()
        attrs = {**amqp.messaging_attributes("process", queue, properties.message_id),
                 "messaging.rabbitmq.redelivered": bool(method.redelivered), "payment.attempt": attempt}
        with self.tracer.start_as_current_span(f"process {queue}", context=amqp.extract_headers(headers),
                                               kind=trace.SpanKind.CONSUMER, attributes=attrs,
                                               record_exception=False, set_status_on_exception=False) as span:
            try:
                payment = json.loads(body)
                payment_id = str(payment["payment_id"])
                int(payment["amount_cents"])
            except (ValueError, KeyError, TypeError):
                span.set_status(trace.StatusCode.ERROR, "malformed payment: dead-lettered")
                return DEAD
            span.set_attribute("payment.id", payment_id)
            if self.charged(payment_id):
                log.info("payment %s already charged: duplicate delivery absorbed", payment_id)
                span.set_attribute("payment.duplicate", True)
                return DONE
            try:
                charge_id = self.gateway.charge(payment)
            except Permanent as e:
                span.set_status(trace.StatusCode.ERROR, f"{e}: dead-lettered")
                log.warning("payment %s is poison (%s): to the dead-letter queue", payment_id, e)
                return DEAD
            except Transient as e:
                if attempt >= amqp.MAX_ATTEMPTS:
                    span.set_status(trace.StatusCode.ERROR, f"{e}; attempt {attempt} was the last: dead-lettered")
                    return DEAD
                span.set_status(trace.StatusCode.ERROR, f"{e}; retry in {amqp.RETRY_DELAYS_MS[attempt - 1]} ms")
                return RETRY
            self.record(payment, charge_id, attempt)
            return DONE

    def charged(self, payment_id: str) -> bool:
        with self.pool.connection() as conn:
            return conn.execute("SELECT 1 FROM charges WHERE payment_id = %s", (payment_id,)).fetchone() is not None

    def record(self, payment: dict, charge_id: str, attempt: int) -> None:
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("""INSERT INTO charges (payment_id, account, amount_cents, charge_id, attempts)
                            VALUES (%s, %s, %s, %s, %s) ON CONFLICT (payment_id) DO NOTHING""",
                         (payment["payment_id"], str(payment.get("account", "")), int(payment["amount_cents"]),
                          charge_id, attempt))

    # --- back on the I/O thread ---
    def settle(self, channel, method, properties, body, outcome: str) -> None:
        with self._lock:
            self.in_flight -= 1
        if not channel.is_open:  # delivered on a connection that is gone: it comes back redelivered
            return
        tag = method.delivery_tag
        if outcome == DONE:
            channel.basic_ack(tag)
        elif outcome == DEAD:
            channel.basic_reject(tag, requeue=False)  # -> dead-letter exchange -> payments.dead
        else:
            headers = dict(properties.headers or {})
            attempt = int(headers.get(amqp.ATTEMPT_HEADER, 1) or 1)
            if attempt >= amqp.MAX_ATTEMPTS:
                channel.basic_reject(tag, requeue=False)
                return
            headers[amqp.ATTEMPT_HEADER] = attempt + 1
            retry = pika.BasicProperties(delivery_mode=2, content_type=properties.content_type,
                                         message_id=properties.message_id, headers=headers)
            channel.basic_publish("", amqp.retry_queue(attempt), body, retry, mandatory=True)  # confirmed
            channel.basic_ack(tag)


def main(worker_class: type[PaymentWorker] = PaymentWorker) -> None:
    install_signal_handlers()
    setup_telemetry("payment_worker")
    worker = worker_class()
    log.info("ready")
    worker.run()
    log.info("stopped")
