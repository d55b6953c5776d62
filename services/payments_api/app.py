"""Payments API (lab 4 reference): POST /payments puts a payment on RabbitMQ, answering 202 only
once the broker confirmed it.

Idempotency keys work as in lab 1 (services.common.idempotency): the key is claimed first; a retry
with the same key and body replays the first answer, so a client that never heard back can send
again safely. A publish that is not confirmed (nack, returned as unroutable, no connection within
the deadline) answers 503 and releases the key: the retry publishes again. The same payment may
then be on the queue twice - the worker's idempotent charge absorbs that.
"""
from __future__ import annotations

import json
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from opentelemetry import trace
from psycopg_pool import ConnectionPool
from pydantic import BaseModel, ConfigDict, Field

from services.common import amqp, db
from services.common.http import ApiError, json_app, parse_body, serve
from services.common.idempotency import SCHEMA, Claim, IdempotencyStore, fingerprint, idempotent, require_key
from services.common.log import get_logger
from services.common.orders.api import traced
from services.common.telemetry import extract_http
from services.common.telemetry import setup as setup_telemetry

from .publisher import ConfirmingPublisher, PublishError

log = get_logger("payments_api")
tracer = trace.get_tracer("payments_api")


class PaymentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    payment_id: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    account: str = Field(min_length=1, max_length=64)
    amount_cents: int = Field(ge=1, le=1_000_000_000, strict=True)


class PaymentsApi:
    store = IdempotencyStore()

    def __init__(self, pool: ConnectionPool, publisher) -> None:
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
        queue = amqp.exchange()
        with tracer.start_as_current_span(f"publish {queue}", kind=trace.SpanKind.PRODUCER,
                                          attributes=amqp.messaging_attributes("send", queue, payment.payment_id)) as span:
            headers = amqp.inject_headers({amqp.ATTEMPT_HEADER: 1})  # inside the PRODUCER span: it is the parent
            try:
                self.publisher.publish(body, headers, payment.payment_id)
            except PublishError as e:
                span.set_status(trace.StatusCode.ERROR, str(e))
                log.warning("payment %s not confirmed: %s", payment.payment_id, e)
                raise ApiError(503, "broker_unavailable", f"not accepted by the broker ({e}); retry with the same key") from None


def declare_once(retry_for: float = 30.0) -> None:
    """The whole topology, before the first payment (idempotent; the worker declares it too): a
    payment published before its queue exists would be unroutable."""
    import time

    import pika

    deadline = time.monotonic() + retry_for
    while True:
        try:
            with pika.BlockingConnection(amqp.parameters()) as conn:
                amqp.declare_topology(conn.channel())
            return
        except pika.exceptions.AMQPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)  # back-off while the broker starts


def create_app(publisher_class=ConfirmingPublisher) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        setup_telemetry("payments_api")
        pool = db.pool()
        declare_once()
        publisher = publisher_class(amqp.exchange(), amqp.ROUTING_KEY)
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


def main(publisher_class=ConfirmingPublisher) -> None:
    serve(create_app(publisher_class))
