"""Projector: your code for lab 2. Read ../README.md first.

It keeps lab 1's read model (`read_model.orders`, `read_model.customer_totals`) up to date from the
routed outbox events on `<LAB_NAMESPACE>.outbox.event.order`. The plumbing (poll loop, one record
at a time, dead-lettering, database reconnects, a clean shutdown) is services.common.consumer_loop;
apply_event is lab 1's, NOT idempotent: an event applied twice counts the order twice.
"""
from __future__ import annotations

import psycopg
from confluent_kafka import Message

from services.common import db
from services.common.config import namespaced
from services.common.consumer_loop import ConsumerLoop, run_loop
from services.common.orders.events import BadEvent
from services.common.orders.projection import apply_event, create_schema
from services.common.outbox.events import ORDER, parse_record, topic_for

# TODO(lab2-6): an inbox table, e.g. "CREATE TABLE IF NOT EXISTS inbox (event_id uuid PRIMARY KEY, ...);"
# TODO(lab2-7): and the newest version applied per order, e.g. aggregate_versions(aggregate_id, version).
EXTRA_TABLES = ""


class Projector(ConsumerLoop):
    service = "projector"

    def __init__(self) -> None:
        topic = topic_for(ORDER)
        super().__init__([topic], namespaced("projector"), f"{topic}.dlq",
                         **{"enable.auto.commit": True, "enable.auto.offset.store": False})

    def connect(self) -> psycopg.Connection:
        conn = db.connect()
        conn.execute("CREATE SCHEMA IF NOT EXISTS read_model")
        conn.execute("SET search_path = read_model")  # lab 1's tables, in a schema of their own
        conn.commit()
        return conn

    def setup(self, conn: psycopg.Connection) -> None:
        create_schema(conn, EXTRA_TABLES)

    def handle(self, msg: Message) -> None:
        try:
            event = parse_record(msg.key(), msg.value(), msg.headers())  # event["event_id"] is the header `id`
        except BadEvent as e:
            self.dead_letter(msg, str(e))
        else:
            with self.conn.transaction():
                # TODO(lab2-6): the relay re-sends after every crash (at least once). In THIS
                # transaction, insert event["event_id"] into your inbox and skip the event if it was
                # already there.
                # TODO(lab2-7): a re-send can also bring an older event of an order back after a newer
                # one. Skip an event whose event["version"] is not newer than the order's last applied.
                apply_event(self.conn, event)
        self.consumer.store_offsets(message=msg)  # after the commit: auto-commit sends it later


def main() -> None:
    run_loop(Projector)
