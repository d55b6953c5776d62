"""Payment worker (lab 4 starter): charges the payments it receives.

It runs, and it loses payments, charges some twice, loops on poison messages and drops its
connection on long jobs: read the README, then do the TODO(lab4-N) tasks.
"""
from __future__ import annotations

import json
import os

import httpx
import pika
from opentelemetry import trace

from services.common import amqp, db
from services.common.lifecycle import install_signal_handlers, stopping
from services.common.log import get_logger
from services.common.telemetry import setup as setup_telemetry

log = get_logger("payment_worker")

# TODO(lab4-6): one charge per payment: make payment_id the PRIMARY KEY (INSERT ... ON CONFLICT
# DO NOTHING), and skip a payment that is already charged - a redelivered message is normal.
SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    id           bigserial PRIMARY KEY,
    payment_id   text NOT NULL,
    account      text NOT NULL,
    amount_cents bigint NOT NULL,
    charge_id    text NOT NULL,
    attempts     int NOT NULL,
    charged_at   timestamptz NOT NULL DEFAULT now()
);
"""


class GatewayError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"gateway answered {status}")
        self.status = status


def charge_at_gateway(client: httpx.Client, payment: dict) -> str:
    url = os.environ.get("PAYMENT_GATEWAY_URL", "")
    if not url:
        return f"local-{payment['payment_id']}"
    resp = client.post(f"{url}/charges", json={"payment_id": payment["payment_id"],
                                               "amount_cents": payment["amount_cents"]},
                       headers={"Idempotency-Key": payment["payment_id"]})
    if resp.status_code != 200:
        raise GatewayError(resp.status_code)  # 503: try later; 422: never (a poison message)
    return str(resp.json()["charge_id"])


def main() -> None:
    install_signal_handlers()
    setup_telemetry("payment_worker")
    tracer = trace.get_tracer("payment_worker")
    conn_db = db.connect(autocommit=True)
    conn_db.execute(SCHEMA)
    client = httpx.Client(timeout=30)

    def on_message(channel, method, properties, body) -> None:
        # TODO(lab4-3): this runs on pika's I/O thread: while it waits for the gateway no heartbeat
        # is sent. Hand the work to a thread pool and settle (ack/reject) back on the I/O thread
        # with connection.add_callback_threadsafe(...).
        # TODO(lab4-7): process in a CONSUMER span whose parent is the context in the message's
        # headers (services.common.amqp.extract_headers); mark a dead-lettered attempt ERROR.
        with tracer.start_as_current_span("process", kind=trace.SpanKind.CONSUMER,
                                          attributes=amqp.messaging_attributes("process", amqp.work_queue())):
            payment = json.loads(body)
            try:
                charge_id = charge_at_gateway(client, payment)
            except (GatewayError, httpx.HTTPError) as e:
                # TODO(lab4-4): a transient failure (503, timeout): re-publish to payments.retry.N with
                # x-attempt N+1 (TTL brings it back after 1 s, 2 s, 4 s), then ack; after 4 attempts
                # dead-letter it. TODO(lab4-5): a 422 is permanent: basic_reject(requeue=False).
                log.warning("payment %s failed (%s): dropped", payment["payment_id"], e)
                return
            conn_db.execute("""INSERT INTO charges (payment_id, account, amount_cents, charge_id, attempts)
                               VALUES (%s, %s, %s, %s, 1)""",
                            (payment["payment_id"], payment.get("account", ""), payment["amount_cents"], charge_id))

    while not stopping.is_set():
        try:
            conn = pika.BlockingConnection(amqp.parameters())
            channel = conn.channel()
            amqp.declare_topology(channel)
            # TODO(lab4-2): manual acks (auto_ack=False, basic_ack after the charge is committed) and a
            # prefetch bound: channel.basic_qos(prefetch_count=amqp.prefetch()).
            channel.basic_consume(amqp.work_queue(), on_message, auto_ack=True)
            log.info("consuming %s", amqp.work_queue())
            while not stopping.is_set():
                conn.process_data_events(time_limit=0.5)
            conn.close()
        except (pika.exceptions.AMQPError, OSError, ValueError) as e:
            # ValueError: pika's "Expected connected socket" when the broker goes away mid-call
            log.warning("lost RabbitMQ (%s: %s); reconnecting", type(e).__name__, e)
            stopping.wait(0.5)
