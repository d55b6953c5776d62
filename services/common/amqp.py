"""RabbitMQ plumbing for lab 4 (pika): connection parameters, the payment topology, trace headers.

The topology (all names prefixed with LAB_NAMESPACE, see config.namespaced), declared idempotently
by every service at start-up and after each reconnect - declaring what exists is a no-op:

    exchange  payments (direct) --payment--> queue payments.work (quorum, x-delivery-limit,
                                               |                 at-least-once dead-lettering)
                                               | basic_reject(requeue=False) / delivery limit
                                               v
    exchange  payments.dlx (fanout) -------> queue payments.dead (quorum): the dead-letter queue
    queue     payments.retry.N (quorum, x-message-ttl = RETRY_DELAYS_MS[N-1], at-least-once)
              --expired--> default exchange --payments.work--> back to work

A failed attempt N is re-published to payments.retry.N (and the original acked); when its TTL
expires RabbitMQ dead-letters it back onto the work queue: retries with growing delays, without a
timer in the worker. These names and delays are the lab's contract: the grader reads the queues
and measures the gaps between attempts.
"""
from __future__ import annotations

import os
from typing import Mapping

import pika
from opentelemetry import propagate
from opentelemetry.context import Context

from .config import env, namespaced

RETRY_DELAYS_MS = (1000, 2000, 4000)  # before attempts 2, 3, 4
MAX_ATTEMPTS = len(RETRY_DELAYS_MS) + 1  # then the message goes to the dead-letter queue
DELIVERY_LIMIT = 10  # quorum queue: a message redelivered this often (crash loops) is dead-lettered
ROUTING_KEY = "payment"
ATTEMPT_HEADER = "x-attempt"  # 1 for the first delivery; set by whoever re-publishes a retry


def exchange() -> str:
    return namespaced("payments")


def work_queue() -> str:
    return namespaced("payments.work")


def dead_letter_exchange() -> str:
    return namespaced("payments.dlx")


def dead_letter_queue() -> str:
    return namespaced("payments.dead")


def retry_queue(attempt: int) -> str:
    """Where a message goes after failed attempt `attempt` (1-based) to wait before the next one."""
    return namespaced(f"payments.retry.{attempt}")


def parameters() -> pika.URLParameters:
    """AMQP_URL (its query may carry heartbeat=N: pika honours it) with a short connect timeout."""
    params = pika.URLParameters(env("AMQP_URL"))
    params.connection_attempts = 1
    params.socket_timeout = 5
    params.blocked_connection_timeout = 30  # a broker in a resource alarm blocks publishers: give up then
    return params


def declare_topology(channel) -> None:
    """Exchanges, queues and bindings; idempotent (the same arguments every time: RabbitMQ refuses a
    re-declaration with different ones, PRECONDITION_FAILED)."""
    channel.exchange_declare(exchange(), exchange_type="direct", durable=True)
    channel.exchange_declare(dead_letter_exchange(), exchange_type="fanout", durable=True)
    channel.queue_declare(dead_letter_queue(), durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_bind(dead_letter_queue(), dead_letter_exchange())
    channel.queue_declare(work_queue(), durable=True, arguments={
        "x-queue-type": "quorum", "x-dead-letter-exchange": dead_letter_exchange(),
        "x-delivery-limit": DELIVERY_LIMIT,
        # Dead-lettering from a quorum queue is at most once by default: a broker that dies just after
        # a reject has removed the message and not yet stored it in the dead-letter queue - gone.
        # at-least-once (RabbitMQ >= 3.10) keeps it until the dead-letter queue confirmed it.
        "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"})
    channel.queue_bind(work_queue(), exchange(), routing_key=ROUTING_KEY)
    for attempt, delay in enumerate(RETRY_DELAYS_MS, 1):
        channel.queue_declare(retry_queue(attempt), durable=True, arguments={
            "x-queue-type": "quorum", "x-message-ttl": delay, "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": work_queue(), "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish"})


def prefetch() -> int:
    return int(os.environ.get("PREFETCH", "8"))


# --- trace context in AMQP headers --------------------------------------------------------------

def inject_headers(headers: dict | None = None) -> dict:
    """The current trace context (W3C traceparent) added to a message's headers."""
    headers = dict(headers or {})
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    headers.update(carrier)
    return headers


def extract_headers(headers: Mapping | None) -> Context:
    """The producer's trace context from a message's headers (empty if none)."""
    return propagate.extract({str(k): v.decode(errors="replace") if isinstance(v, bytes) else str(v)
                              for k, v in (headers or {}).items() if isinstance(v, (str, bytes))})


def messaging_attributes(operation: str, destination: str, message_id: str | None = None) -> dict[str, str]:
    """OpenTelemetry messaging semantic conventions for RabbitMQ."""
    attrs = {"messaging.system": "rabbitmq", "messaging.operation.type": operation,
             "messaging.destination.name": destination}
    if message_id:
        attrs["messaging.message.id"] = message_id
    return attrs
