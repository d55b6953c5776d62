"""Read-model consumer (reference): exactly-once *effects* on at-least-once delivery.

For each record: parse it (malformed -> dead-letter topic), then in ONE database transaction
claim its event_id in the inbox and, only if the claim is new, apply it; commit the Kafka offset
only after that transaction committed. A crash anywhere means the record comes again, and the
inbox makes the second time a no-op.
"""
from __future__ import annotations

import time

import psycopg
from confluent_kafka import KafkaError, Message

from services.common import db, kafka
from services.common.config import namespaced
from services.common.lifecycle import install_signal_handlers
from services.common.log import get_logger
from services.common.telemetry import setup as setup_telemetry
from services.orders.events import BadEvent, parse_event
from services.orders.projection import apply_event, create_schema

log = get_logger("read_model")

INBOX = """
CREATE TABLE IF NOT EXISTS processed_events (
    event_id     text PRIMARY KEY,
    topic        text NOT NULL,
    partition    int NOT NULL,
    "offset"     bigint NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now()
);
"""


class ReadModel:
    def __init__(self) -> None:
        self.topic = namespaced("orders")
        self.dlq_topic = namespaced("orders.dlq")
        self.conn = db.connect()
        create_schema(self.conn, INBOX)
        # Offsets are committed by hand, synchronously, after each transaction: simple to reason
        # about (nothing is ever marked done that is not in the database) at some throughput cost.
        self.consumer = kafka.consumer(namespaced("read-model"), **{"enable.auto.commit": False})
        self.dlq = kafka.producer()

    # --- the lesson ---
    def handle(self, msg: Message) -> None:
        try:
            event = parse_event(msg.value())
        except BadEvent as e:
            self.dead_letter(msg, str(e))
        else:
            with self.conn.transaction():
                if self.claim(event, msg):
                    apply_event(self.conn, event)
                else:
                    log.info("duplicate event %s (%s %s) skipped", event["event_id"], event["type"], event["order_id"])
        self.commit_offset(msg)

    def claim(self, event: dict, msg: Message) -> bool:
        """Record the event in the inbox; False if it was processed before."""
        return self.conn.execute(
            """INSERT INTO processed_events (event_id, topic, partition, "offset") VALUES (%s, %s, %s, %s)
               ON CONFLICT (event_id) DO NOTHING""",
            (event["event_id"], msg.topic(), msg.partition(), msg.offset())).rowcount == 1

    def commit_offset(self, msg: Message) -> None:
        self.consumer.commit(message=msg, asynchronous=False)

    # --- plumbing ---
    def dead_letter(self, msg: Message, reason: str) -> None:
        log.warning("malformed record at %s[%d]@%d: %s -> %s", msg.topic(), msg.partition(), msg.offset(),
                    reason, self.dlq_topic)
        headers = list(msg.headers() or []) + [("error", reason.encode()), ("source_offset",
                                                                           f"{msg.partition()}:{msg.offset()}".encode())]
        self.dlq.produce(self.dlq_topic, key=msg.key(), value=msg.value(), headers=headers)
        if self.dlq.flush(30):
            raise RuntimeError("dead-letter topic did not acknowledge; not committing the offset")

    def on_assign(self, consumer, partitions) -> None:
        log.info("assigned %s", [p.partition for p in partitions])

    def on_revoke(self, consumer, partitions) -> None:
        # Nothing to flush: every offset is committed right after its transaction.
        log.info("revoked %s", [p.partition for p in partitions])

    def process(self, msg: Message) -> None:
        """handle() with retries on a lost database connection (the record is not skipped)."""
        for attempt in range(1, 11):
            try:
                return self.handle(msg)
            except psycopg.OperationalError as e:
                log.warning("database error (attempt %d): %s; reconnecting", attempt, e)
                time.sleep(min(0.2 * attempt, 2))  # back off before reconnecting
                self.conn = db.connect()
        raise RuntimeError("database unavailable; giving up so the record is redelivered")

    def run(self) -> None:
        stopping = install_signal_handlers()
        self.consumer.subscribe([self.topic], on_assign=self.on_assign, on_revoke=self.on_revoke)
        log.info("consuming %s", self.topic)
        try:
            while not stopping.is_set():
                msg = self.consumer.poll(0.5)
                if msg is None:
                    continue
                if msg.error():
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        log.warning("consumer error: %s", msg.error())
                    continue
                self.process(msg)
        finally:
            self.consumer.close()
            self.conn.close()
            log.info("stopped")


def main(read_model_class: type[ReadModel] = ReadModel) -> None:
    setup_telemetry("read_model")
    read_model_class().run()
