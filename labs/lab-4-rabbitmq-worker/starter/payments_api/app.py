"""Payments API (lab 4 starter): POST /payments puts a payment on RabbitMQ.

It runs, and it loses payments: read the README, then do the TODO(lab4-N) tasks.
Idempotency keys work as in lab 1 (services.common.idempotency) and are done for you.
"""
from __future__ import annotations

import json
import threading
import time
from contextlib import asynccontextmanager
from typing import Any

import pika
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from opentelemetry import trace
from pydantic import BaseModel, ConfigDict, Field

from services.common import amqp, db
from services.common.http import ApiError, json_app, parse_body, serve
from services.common.idempotency import SCHEMA, Claim, IdempotencyStore, fingerprint, idempotent, require_key
from services.common.log import get_logger
from services.common.orders.api import traced
from services.common.telemetry import extract_http
from services.common.telemetry import setup as setup_telemetry

log = get_logger("payments_api")
tracer = trace.get_tracer("payments_api")


class PaymentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    payment_id: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    account: str = Field(min_length=1, max_length=64)
    amount_cents: int = Field(ge=1, le=1_000_000_000, strict=True)


class PublishError(RuntimeError):
    pass


class Publisher:
    """One blocking connection shared by the request threads (pika is not thread-safe: a lock).

    TODO(lab4-1): this publisher answers "done" as soon as the bytes are written. Make it safe:
      - channel.confirm_delivery(): basic_publish then waits for the broker's ack (raises
        pika.exceptions.NackError when the broker refuses the message);
      - mandatory=True: an unroutable message comes back (pika raises UnroutableError in
        confirm mode) instead of being dropped silently;
      - after a lost connection, publish again what was not confirmed (or let the request
        answer 503 so the client retries with its key - never 202 for an unconfirmed message).
    A faster design: pika's SelectConnection with asynchronous confirms (see the README).
    """

    def __init__(self, exchange: str, routing_key: str) -> None:
        self.exchange, self.routing_key = exchange, routing_key
        self._lock = threading.Lock()
        self._conn: pika.BlockingConnection | None = None
        self._channel = None

    def publish(self, body: bytes, headers: dict, message_id: str) -> None:
        with self._lock:
            try:
                if self._channel is None or not self._channel.is_open:
                    self._conn = pika.BlockingConnection(amqp.parameters())
                    self._channel = self._conn.channel()
                self._channel.basic_publish(self.exchange, self.routing_key, body,
                                            pika.BasicProperties(delivery_mode=2, message_id=message_id,
                                                                 headers=headers))
            except pika.exceptions.AMQPError as e:
                self._channel = None
                raise PublishError(str(e)) from None

    def close(self) -> None:
        if self._conn is not None and self._conn.is_open:
            self._conn.close()


class PaymentsApi:
    store = IdempotencyStore()

    def __init__(self, pool, publisher: Publisher) -> None:
        self.pool, self.publisher = pool, publisher
        with pool.connection() as conn:
            conn.execute(SCHEMA)

    def pay(self, key: str | None, raw: bytes) -> Response:
        key = require_key(key)
        data, payment = parse_body(raw, PaymentIn)

        def work(_: Claim) -> tuple[int, Any]:
            self.publish(payment)
            return 202, {"payment_id": payment.payment_id, "status": "accepted"}

        return idempotent(self.pool, self.store, key, fingerprint("POST", "/payments", data), work)

    def publish(self, payment: PaymentIn) -> None:
        body = json.dumps(payment.model_dump()).encode()
        # TODO(lab4-7): publish inside a PRODUCER span ("publish <exchange>", messaging attributes:
        # services.common.amqp.messaging_attributes) and put its context into the headers
        # (services.common.amqp.inject_headers) so the worker can continue the trace.
        headers = {amqp.ATTEMPT_HEADER: 1}
        try:
            self.publisher.publish(body, headers, payment.payment_id)
        except PublishError as e:
            raise ApiError(503, "broker_unavailable", f"not accepted by the broker ({e}); retry with the same key") from None


def declare_once(retry_for: float = 30.0) -> None:
    deadline = time.monotonic() + retry_for
    while True:
        try:
            with pika.BlockingConnection(amqp.parameters()) as conn:
                amqp.declare_topology(conn.channel())
            return
        except pika.exceptions.AMQPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def create_app() -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        setup_telemetry("payments_api")
        pool = db.pool()
        declare_once()
        publisher = Publisher(amqp.exchange(), amqp.ROUTING_KEY)
        app.state.api = PaymentsApi(pool, publisher)
        log.info("ready: payments go to exchange %s", amqp.exchange())
        yield
        publisher.close()
        pool.close()

    app = json_app("payments-api")
    app.router.lifespan_context = lifespan

    @app.post("/payments")
    async def pay(request: Request) -> Response:
        body = await request.body()
        return await run_in_threadpool(traced, "/payments", request.app.state.api.pay,
                                       request.headers.get("idempotency-key"), body,
                                       context=extract_http(request.headers), path=request.url.path)

    return app


def main() -> None:
    serve(create_app())
