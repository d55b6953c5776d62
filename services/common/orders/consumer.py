"""What every read-model consumer shares besides the lesson: connections, the poll loop,
dead-lettering, reconnects and a clean shutdown. Subclasses implement handle(msg).

Records are handled one at a time on the polling thread, so a rebalance (whose callbacks run
inside poll()) never finds a record half-done: whatever handle() committed is the position the
next owner of the partition starts from.
"""
from __future__ import annotations

import time

import psycopg
from confluent_kafka import KafkaError, Message
from opentelemetry import trace

from services.common import db, kafka
from services.common.config import namespaced
from services.common.lifecycle import install_signal_handlers, stopping
from services.common.log import get_logger
from services.common.telemetry import extract_headers, messaging_attributes
from services.common.telemetry import setup as setup_telemetry

from .projection import apply_event, create_schema

log = get_logger("read_model")
tracer = trace.get_tracer("read_model")


class ReadModelLoop:
    schema = ""  # extra tables a subclass needs (e.g. the inbox)

    def __init__(self) -> None:
        self.topic = namespaced("orders")
        self.dlq_topic = namespaced("orders.dlq")
        self.conn = db.connect()
        create_schema(self.conn, self.schema)
        self.consumer = kafka.consumer(namespaced("read-model"), **{"enable.auto.commit": False})
        self.dlq = kafka.producer()

    def handle(self, msg: Message) -> None:
        raise NotImplementedError

    def apply(self, conn: psycopg.Connection, event: dict) -> None:
        """The event's effects on the read model, inside the caller's transaction."""
        apply_event(conn, event)

    def commit_offset(self, msg: Message) -> None:
        self.consumer.commit(message=msg, asynchronous=False)

    def dead_letter(self, msg: Message, reason: str) -> None:
        log.warning("malformed record at %s[%d]@%d: %s -> %s", msg.topic(), msg.partition(), msg.offset(),
                    reason, self.dlq_topic)
        headers = list(msg.headers() or []) + [
            ("error", reason.encode()), ("source", f"{msg.topic()}[{msg.partition()}]@{msg.offset()}".encode())]
        self.dlq.produce(self.dlq_topic, key=msg.key(), value=msg.value(), headers=headers)
        if self.dlq.flush(30):
            raise RuntimeError("the dead-letter topic did not acknowledge; not committing the offset")

    def on_assign(self, consumer, partitions) -> None:
        log.info("assigned %s", [p.partition for p in partitions])

    def on_revoke(self, consumer, partitions) -> None:
        log.info("revoked %s", [p.partition for p in partitions])

    def process(self, msg: Message) -> None:
        """handle() in a span that continues the producer's trace, with retries on a lost database
        connection (the record is not skipped)."""
        with tracer.start_as_current_span(f"process {msg.topic()}", context=extract_headers(msg.headers()),
                                          kind=trace.SpanKind.CONSUMER,
                                          attributes=messaging_attributes("process", msg.topic(), msg.key())) as span:
            span.set_attribute("messaging.kafka.offset", msg.offset())
            span.set_attribute("messaging.destination.partition.id", str(msg.partition()))
            for attempt in range(1, 11):
                try:
                    if self.conn.closed:
                        self.conn = db.connect()
                    return self.handle(msg)
                except psycopg.OperationalError as e:
                    log.warning("database error (attempt %d): %s; reconnecting", attempt, e)
                    self.conn.close()
                    time.sleep(min(0.2 * attempt, 2))  # back off before reconnecting
            raise RuntimeError("database unavailable; exiting so the record is redelivered")

    def poll(self) -> list[Message]:
        msg = self.consumer.poll(0.5)
        return [] if msg is None else [msg]

    def run(self) -> None:
        self.consumer.subscribe([self.topic], on_assign=self.on_assign, on_revoke=self.on_revoke)
        log.info("consuming %s", self.topic)
        try:
            while not stopping.is_set():
                for msg in self.poll():
                    if msg.error():
                        if msg.error().code() != KafkaError._PARTITION_EOF:
                            log.warning("consumer error: %s", msg.error())
                        continue
                    self.process(msg)
        finally:
            self.consumer.close()
            self.conn.close()
            log.info("stopped")


def run_consumer(cls: type[ReadModelLoop]) -> None:
    install_signal_handlers()  # first: a SIGTERM while connecting still ends in a clean exit 0
    setup_telemetry("read_model")
    cls().run()
