"""Projector (lab 2 reference): the downstream read model, fed by the relay's routed outbox events.

Lab 1's read model again (services.common.orders.projection, in a schema of its own, `read_model`,
so its `orders` table does not meet the order service's), on lab 2's at-least-once stream:
- the relay re-sends after a crash, so the same outbox `id` can come twice or more: an inbox of
  processed ids, written in the SAME transaction as the effects, makes every repeat a no-op;
- events of one order come in commit order (one key, one partition, one relay), but a re-send can
  bring an older event back after a newer one: a per-order version that only ever goes up rejects it.
The offsets are stored for the auto-commit only after that transaction committed (lab 1's README,
"Offsets after the commit"): a crash repeats records, never skips one. The records of one poll
share one transaction: one commit per batch, not per record, for throughput.
"""
from __future__ import annotations

import psycopg
from confluent_kafka import Message

from services.common import db
from services.common.config import env_int, namespaced
from services.common.consumer_loop import ConsumerLoop, run_loop
from services.common.orders.events import BadEvent
from services.common.orders.projection import apply_event, create_schema
from services.common.outbox.events import ORDER, parse_record, topic_for

READ_MODEL_SCHEMA = "read_model"
INBOX = """
CREATE TABLE IF NOT EXISTS inbox (
    event_id     uuid PRIMARY KEY,          -- the outbox row's id (Kafka header `id`)
    aggregate_id text NOT NULL,
    version      int NOT NULL,
    applied      boolean NOT NULL,          -- false: an older version than one already applied
    topic        text NOT NULL,
    partition    int NOT NULL,
    "offset"     bigint NOT NULL,
    processed_seq bigint GENERATED ALWAYS AS IDENTITY,  -- the order events were processed in
    processed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS aggregate_versions (
    aggregate_id text PRIMARY KEY,
    version      int NOT NULL               -- the newest version applied: never goes down
);
"""


class Projector(ConsumerLoop):
    service = "projector"

    def __init__(self) -> None:
        self.batch_size = env_int("PROJECTOR_BATCH", 100)  # records per database transaction, at most
        topic = topic_for(ORDER)
        # Offsets: stored after each transaction, committed by librdkafka in the background.
        super().__init__([topic], namespaced("projector"), f"{topic}.dlq",
                         **{"enable.auto.commit": True, "enable.auto.offset.store": False})

    def connect(self) -> psycopg.Connection:
        conn = db.connect()
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {READ_MODEL_SCHEMA}")
        conn.execute(f"SET search_path = {READ_MODEL_SCHEMA}")  # lab 1's tables, in this schema
        conn.commit()
        return conn

    def setup(self, conn: psycopg.Connection) -> None:
        create_schema(conn, INBOX)

    def commit_offset(self, msg: Message) -> None:
        self.consumer.store_offsets(message=msg)

    def poll(self) -> list[Message]:
        """Wait for one record, then take whatever else has arrived (up to batch_size) without waiting."""
        first = self.consumer.poll(0.5)
        return [] if first is None else [first] + self.consumer.consume(self.batch_size - 1, 0)

    def process_batch(self, msgs: list[Message]) -> None:
        """The records of one poll, in order, in ONE transaction: one commit instead of one per
        record (each record is still claimed in the inbox on its own). Offsets only after the commit;
        a lost connection repeats the whole batch, which the inbox makes harmless."""
        def apply_all() -> None:
            with self.conn.transaction():
                for msg in msgs:
                    with self.span(msg):
                        self.apply_record(msg)

        if self.with_db_retries(apply_all):
            for msg in msgs:
                self.commit_offset(msg)  # only now: the transaction above has committed

    def apply_record(self, msg: Message) -> None:
        """One record's effects, inside the caller's transaction."""
        try:
            event = parse_record(msg.key(), msg.value(), msg.headers())
        except BadEvent as e:
            self.dead_letter(msg, str(e))  # (a retried batch may park it twice: harmless)
            return
        newer = self.newer(event)  # a duplicate has the version already applied: not newer
        if not self.claim(event, msg, applied=newer):
            self.log.info("duplicate event %s (%s %s) skipped", event["event_id"], event["type"], event["order_id"])
        elif not newer:
            self.log.warning("event %s is version %d of %s, not newer than the one applied: skipped",
                             event["event_id"], event["version"], event["order_id"])
        else:
            apply_event(self.conn, event)

    def claim(self, event: dict, msg: Message, applied: bool) -> bool:
        """Record the event id in the inbox, in the caller's transaction; False if seen before."""
        return self.conn.execute(
            """INSERT INTO inbox (event_id, aggregate_id, version, applied, topic, partition, "offset")
               VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING""",
            (event["event_id"], event["order_id"], event["version"], applied, msg.topic(), msg.partition(),
             msg.offset())).rowcount == 1

    def newer(self, event: dict) -> bool:
        """Raise the order's version to the event's; False if the event is not newer (then nothing changes)."""
        return self.conn.execute(
            """INSERT INTO aggregate_versions (aggregate_id, version) VALUES (%s, %s)
               ON CONFLICT (aggregate_id) DO UPDATE SET version = EXCLUDED.version
               WHERE aggregate_versions.version < EXCLUDED.version""",
            (event["order_id"], event["version"])).rowcount == 1


def main() -> None:
    run_loop(Projector)
