"""Read-model consumer: your code for lab 1.

It keeps `orders` and `customer_totals` (see ../README.md, "The read model") up to date from the
order events. The plumbing (connections, poll loop, dead-letter producer, shutdown) comes from
services.common.orders.consumer; self.apply() changes the tables for one event - and is NOT idempotent:
applying the same event twice counts the order twice. Making every event count once is your job.
"""
from __future__ import annotations

from confluent_kafka import Message

from services.common.orders.consumer import ReadModelLoop, run_consumer
from services.common.orders.events import parse_event


class ReadModel(ReadModelLoop):
    # TODO(lab1-3): an inbox table, e.g.
    #   schema = "CREATE TABLE IF NOT EXISTS processed_events (event_id text PRIMARY KEY, ...);"
    schema = ""

    def handle(self, msg: Message) -> None:
        # TODO(lab1-4): the offset is committed before the effects exist: a crash between this line
        # and the transaction below loses the event for good. Commit it after the transaction.
        self.commit_offset(msg)

        # TODO(lab1-5): parse_event raises BadEvent for a record that is not a valid event, and that
        # crashes this consumer. Catch it and call self.dead_letter(msg, str(error)) instead.
        event = parse_event(msg.value())

        with self.conn.transaction():
            # TODO(lab1-3): the same event can arrive again (redelivery after a crash, a producer
            # retry, a duplicate). In THIS transaction, insert event["event_id"] into your inbox
            # table and skip self.apply if it was already there.
            self.apply(self.conn, event)


def main() -> None:
    run_consumer(ReadModel)
