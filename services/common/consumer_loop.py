"""A Kafka consumer loop for services, not tied to any lab: subclasses implement handle(msg).

What every consuming service needs around its lesson:
- records handled one at a time on the polling thread, so a rebalance (whose callbacks run inside
  poll()) never finds a record half-done: whatever handle() committed is where the next owner of
  the partition starts;
- malformed records parked in a dead-letter topic with an `error` header (dead_letter());
- a lost database connection retried with back-off, the same record again: never skipped;
- a CONSUMER span per record that continues the producer's trace (W3C `traceparent` header);
- SIGTERM/SIGINT: finish the current record, close the consumer (leaving the group at once) and
  return; run_loop() then exits 0 and the buffered spans are flushed.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import psycopg
from confluent_kafka import KafkaError, Message
from opentelemetry import trace

from services.common import db, kafka
from services.common.lifecycle import install_signal_handlers, stopping
from services.common.log import get_logger
from services.common.telemetry import extract_headers, messaging_attributes
from services.common.telemetry import setup as setup_telemetry


class ConsumerLoop:
    service = "consumer"        # logger, tracer and default OTEL service name
    max_db_attempts: int | None = None  # None: retry a lost database until SIGTERM

    def __init__(self, topics: list[str], group: str, dlq_topic: str | None = None, *,
                 database: bool = True, **consumer_config) -> None:
        self.log = get_logger(self.service)
        self.tracer = trace.get_tracer(self.service)
        self.topics, self.dlq_topic = topics, dlq_topic
        self.conn: psycopg.Connection | None = self.connect() if database else None
        if self.conn is not None:
            self.setup(self.conn)
        self.consumer = kafka.consumer(group, **{"enable.auto.commit": False, **consumer_config})
        self.dlq = kafka.producer() if dlq_topic else None

    # --- what a subclass provides ---
    def connect(self) -> psycopg.Connection:
        """A new database connection (at start-up and after a lost one)."""
        return db.connect()

    def setup(self, conn: psycopg.Connection) -> None:
        """Create the tables this service needs (once, at start-up)."""

    def handle(self, msg: Message) -> None:
        raise NotImplementedError

    # --- building blocks for handle() ---
    def commit_offset(self, msg: Message) -> None:
        """Synchronous: when this returns, the group's offset is past `msg`."""
        self.consumer.commit(message=msg, asynchronous=False)

    def dead_letter(self, msg: Message, reason: str) -> None:
        """Park `msg` in the dead-letter topic with the reason; return only once it is stored there."""
        if self.dlq is None:
            raise RuntimeError(f"malformed record and no dead-letter topic: {reason}")
        self.log.warning("malformed record at %s[%d]@%d: %s -> %s", msg.topic(), msg.partition(), msg.offset(),
                         reason, self.dlq_topic)
        trace.get_current_span().set_status(trace.StatusCode.ERROR, f"dead-lettered: {reason}")  # a failed record
        headers = list(msg.headers() or []) + [
            ("error", reason.encode()), ("source", f"{msg.topic()}[{msg.partition()}]@{msg.offset()}".encode())]
        self.dlq.produce(self.dlq_topic, key=msg.key(), value=msg.value(), headers=headers)
        if self.dlq.flush(30):
            raise RuntimeError("the dead-letter topic did not acknowledge; not committing the offset")

    # --- the loop ---
    def on_assign(self, consumer, partitions) -> None:
        self.log.info("assigned %s", [p.partition for p in partitions])

    def on_revoke(self, consumer, partitions) -> None:
        self.log.info("revoked %s", [p.partition for p in partitions])

    def process(self, msg: Message) -> None:
        """handle() in a span that continues the producer's trace, retrying a lost database
        connection with back-off (the same record: never skipped)."""
        with self.span(msg):
            self.with_db_retries(lambda: self.handle(msg))

    def process_batch(self, msgs: list[Message]) -> None:
        """Everything one poll() returned, in order. Override to handle a batch at once (e.g. in
        one database transaction), keeping the order and storing offsets only after the commit."""
        for msg in msgs:
            self.process(msg)
            if stopping.is_set():
                break

    @contextmanager
    def span(self, msg: Message) -> Iterator[trace.Span]:
        """A CONSUMER span for one record, child of the span whose context the producer put in its headers."""
        with self.tracer.start_as_current_span(f"process {msg.topic()}", context=extract_headers(msg.headers()),
                                               kind=trace.SpanKind.CONSUMER,
                                               attributes=messaging_attributes("process", msg.topic(), msg.key())) as span:
            span.set_attribute("messaging.kafka.offset", msg.offset())
            span.set_attribute("messaging.destination.partition.id", str(msg.partition()))
            yield span

    def with_db_retries(self, work: Callable[[], None]) -> bool:
        """Run `work`; on a lost database connection reconnect with back-off and run it again.
        False if SIGTERM came while waiting (the work is then not done: leave it uncommitted)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                if self.conn is not None and self.conn.closed:
                    self.conn = self.connect()
                work()
                return True
            except psycopg.OperationalError as e:
                if self.max_db_attempts is not None and attempt >= self.max_db_attempts:
                    raise RuntimeError("database unavailable; exiting so the record is redelivered") from e
                self.log.warning("database error (attempt %d): %s; reconnecting", attempt, e)
                if self.conn is not None:
                    self.conn.close()
                if stopping.wait(min(0.2 * attempt, 2)):  # back off
                    return False

    def poll(self) -> list[Message]:
        msg = self.consumer.poll(0.5)
        return [] if msg is None else [msg]

    def run(self) -> None:
        self.consumer.subscribe(self.topics, on_assign=self.on_assign, on_revoke=self.on_revoke)
        self.log.info("consuming %s", ", ".join(self.topics))
        try:
            while not stopping.is_set():
                batch = []
                for msg in self.poll():
                    if msg.error():
                        if msg.error().code() != KafkaError._PARTITION_EOF:
                            self.log.warning("consumer error: %s", msg.error())
                        continue
                    batch.append(msg)
                if batch:
                    self.process_batch(batch)
        finally:
            self.close()

    def close(self) -> None:
        self.consumer.close()
        if self.dlq is not None:
            self.dlq.flush(5)
        if self.conn is not None:
            self.conn.close()
        self.log.info("stopped")


def run_loop(cls: type[ConsumerLoop]) -> None:
    """The `main()` of a consuming service: signals first (a SIGTERM while connecting still ends in a
    clean exit 0), telemetry, then the loop until SIGTERM."""
    install_signal_handlers()
    setup_telemetry(cls.service)
    cls().run()
