"""Kafka client factories with the kit's defaults."""
from __future__ import annotations

from typing import Any

from confluent_kafka import Consumer, Producer

from .config import env

# Group joins take session.timeout.ms / 2 on Tansu; 6 s keeps joins and takeovers quick.
CONSUMER_DEFAULTS = {"session.timeout.ms": 6000, "auto.offset.reset": "earliest"}
RELIABLE_PRODUCER = {"enable.idempotence": True, "acks": "all"}


def producer(**overrides: Any) -> Producer:
    return Producer({"bootstrap.servers": env("KAFKA_BOOTSTRAP_SERVERS"), **RELIABLE_PRODUCER, **overrides})


def consumer(group: str, **overrides: Any) -> Consumer:
    return Consumer({"bootstrap.servers": env("KAFKA_BOOTSTRAP_SERVERS"), "group.id": group,
                     **CONSUMER_DEFAULTS, **overrides})
