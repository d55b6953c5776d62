"""Read-model consumer (reference): exactly-once *effects* on at-least-once delivery.

For each record: parse it (malformed -> dead-letter topic), then in ONE database transaction
claim its event_id in the inbox and, only if the claim is new, apply it; commit the Kafka offset
only after that transaction committed. A crash anywhere means the record comes again, and the
inbox makes the second time a no-op. Offsets are committed synchronously per record: nothing is
ever marked done that is not in the database, at some cost in throughput.
"""
from __future__ import annotations

from confluent_kafka import Message

from services.common.orders.consumer import ReadModelLoop, log, run_consumer
from services.common.orders.events import BadEvent, parse_event

INBOX = """
CREATE TABLE IF NOT EXISTS processed_events (
    event_id     text PRIMARY KEY,
    topic        text NOT NULL,
    partition    int NOT NULL,
    "offset"     bigint NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now()
);
"""


class ReadModel(ReadModelLoop):
    schema = INBOX

    def handle(self, msg: Message) -> None:
        self.apply_record(msg)
        self.commit_offset(msg)  # only now: the effects above are committed

    def apply_record(self, msg: Message) -> None:
        try:
            event = parse_event(msg.value())
        except BadEvent as e:
            self.dead_letter(msg, str(e))
            return
        with self.conn.transaction():
            if self.claim(event, msg):
                self.apply(self.conn, event)
            else:
                log.info("duplicate event %s (%s %s) skipped", event["event_id"], event["type"], event["order_id"])

    def claim(self, event: dict, msg: Message) -> bool:
        """Record the event in the inbox, in the caller's transaction; False if seen before."""
        return self.conn.execute(
            """INSERT INTO processed_events (event_id, topic, partition, "offset") VALUES (%s, %s, %s, %s)
               ON CONFLICT (event_id) DO NOTHING""",
            (event["event_id"], msg.topic(), msg.partition(), msg.offset())).rowcount == 1


def main() -> None:
    run_consumer(ReadModel)
