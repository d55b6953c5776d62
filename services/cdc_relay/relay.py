"""CDC relay (lab 2 reference): committed outbox rows -> Kafka, at least once, in commit order.

It reads the outbox's inserts from PostgreSQL's write-ahead log through a logical replication slot
(plugin `pgoutput`, a publication for the outbox table only). The slot remembers how far this
relay got (`confirmed_flush_lsn`); it is the relay's only state. One round:

  1. peek   the committed transactions after the slot's position (nothing is consumed by peeking);
  2. send   each row as a routed record (topic `<ns>.outbox.event.<aggregatetype>`, key
            `aggregateid`, value `payload`, headers `id`, `type`, `traceparent`), in commit order;
  3. wait   for Kafka's delivery reports (producer.flush);
  4. advance the slot to the end of the last transaction whose records were ALL acknowledged,
            and of every transaction before it. Nothing else moves the slot.

A crash anywhere means the next life peeks the same transactions again and re-sends them:
duplicates (consumers dedupe by the `id` header), never a loss. Why the SQL slot functions and
not a streaming replication connection: see the lab README ("Reading the log").
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import psycopg
from confluent_kafka import KafkaError, Message
from opentelemetry import propagate, trace

from services.common import db, kafka
from services.common.config import env_int
from services.common.lifecycle import install_signal_handlers, stopping
from services.common.log import get_logger
from services.common.outbox import events, schema
from services.common.outbox.pgoutput import Begin, Commit, Decoder, Insert, int_to_lsn
from services.common.telemetry import inject_headers, messaging_attributes
from services.common.telemetry import setup as setup_telemetry

log = get_logger("cdc_relay")
tracer = trace.get_tracer("cdc_relay")

# Whole transactions are returned: a peek stops after the transaction that reaches this many rows.
PEEK = """SELECT lsn, data FROM pg_logical_slot_peek_binary_changes(%s, NULL, %s,
              'proto_version', '1', 'publication_names', %s, 'messages', 'true')"""
SLOT_LAG = """SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,
                     pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint
              FROM pg_replication_slots WHERE slot_name = %s"""
HEARTBEAT_PREFIX = "labkit.relay.heartbeat"
# After a failed delivery librdkafka's idempotent producer can stay unusable (seen on Tansu: every
# later send fails PRODUCER_FENCED); a new producer recovers. Re-sending is safe: consumers dedupe.
STUCK = {KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH, KafkaError.UNKNOWN_PRODUCER_ID,
         KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER}


@dataclass
class Transaction:
    """One committed transaction from the slot: its outbox rows and where it ends in the WAL."""

    commit_time: datetime
    end_lsn: int = 0
    rows: list[dict] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # delivery errors of its records


class Relay:
    def __init__(self) -> None:
        self.batch_rows = env_int("RELAY_BATCH_ROWS", 2000)
        self.idle_ms = env_int("RELAY_IDLE_MS", 20)  # pause after an empty peek (each peek costs ~2 ms of server CPU)
        self.timeout_ms = env_int("RELAY_DELIVERY_TIMEOUT_MS", 10000)
        self.conn = self.connect()
        self.producer = self.new_producer()
        self.published = 0
        self.broken = False  # set by a delivery report: this producer cannot recover
        self.behind_ms = 0.0  # commit -> acknowledged, oldest transaction of the last batch
        self.last_heartbeat = self.last_report = time.monotonic()

    def connect(self) -> psycopg.Connection:
        conn = db.connect(autocommit=True)
        schema.create_schema(conn)
        self.slot, self.publication = schema.ensure_replication(conn)
        return conn

    def new_producer(self):
        # message.timeout.ms bounds how long a send may take: every record gets a report in time.
        return kafka.producer(**{"linger.ms": 2, "message.timeout.ms": self.timeout_ms})

    # --- 1. peek ---
    def read(self) -> list[Transaction]:
        """Committed transactions after the slot's position, oldest first (the slot is not moved)."""
        decoder, txns = Decoder(), []
        for _lsn, data in self.conn.execute(PEEK, (self.slot, self.batch_rows, self.publication)):
            message = decoder.decode(bytes(data))
            if isinstance(message, Begin):
                txns.append(Transaction(message.commit_time))
            elif isinstance(message, Insert) and message.table.endswith(".outbox"):
                txns[-1].rows.append(message.row)
            elif isinstance(message, Commit):
                txns[-1].end_lsn = message.end_lsn
        return txns

    # --- 2. and 3. send, wait for the acknowledgements ---
    def publish(self, txns: list[Transaction]) -> None:
        for txn in txns:
            for row in txn.rows:
                self.send(row, txn)
        if not any(txn.rows for txn in txns):
            return  # only heartbeats (or transactions of other tables): nothing to wait for
        remaining = self.producer.flush(self.timeout_ms / 1000 + 5)  # delivery reports run in here
        if remaining:
            for txn in txns:
                txn.failed.append(f"{remaining} records without a delivery report")

    def send(self, row: dict, txn: Transaction) -> None:
        topic = events.topic_for(row["aggregatetype"])
        key = row["aggregateid"].encode()
        parent = propagate.extract({"traceparent": row["traceparent"]} if row.get("traceparent") else {})
        span = tracer.start_span(f"send {topic}", context=parent, kind=trace.SpanKind.PRODUCER,
                                 attributes={**messaging_attributes("send", topic, key),
                                             "messaging.message.id": row["id"]})
        with trace.use_span(span, end_on_exit=False):
            headers = [("id", row["id"].encode()), ("type", row["type"].encode())] + inject_headers()

        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                txn.failed.append(str(err))
                span.set_status(trace.StatusCode.ERROR, str(err))
                if err.fatal() or err.code() in STUCK:
                    self.broken = True
            span.end()

        self.producer.produce(topic, key=key, value=row["payload"].encode(), headers=headers, on_delivery=delivered)

    # --- 4. advance ---
    def acknowledged_up_to(self, txns: list[Transaction]) -> int | None:
        """End LSN of the longest prefix of transactions whose records were all acknowledged."""
        upto = None
        for txn in txns:
            if txn.failed:
                log.warning("not acknowledged (will be re-sent): %s", txn.failed[0])
                break
            upto = txn.end_lsn
        return upto

    def advance(self, lsn: int) -> None:
        self.conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (self.slot, int_to_lsn(lsn)))

    def heartbeat(self) -> None:
        """When only other tables are written, no outbox transaction comes to advance the slot past
        their WAL, which the slot then retains. A logical message (in the slot's stream as a
        transaction of its own) gives the next round an end LSN to advance to. Debezium calls
        this a heartbeat (`heartbeat.action.query`)."""
        unconfirmed, _ = self.conn.execute(SLOT_LAG, (self.slot,)).fetchone()
        if unconfirmed > 0:
            self.conn.execute("SELECT pg_logical_emit_message(true, %s, '')", (HEARTBEAT_PREFIX,))
        self.last_heartbeat = time.monotonic()

    def report(self) -> None:
        unconfirmed, retained = self.conn.execute(SLOT_LAG, (self.slot,)).fetchone()
        log.info("slot %s lag: %d bytes unconfirmed, %d bytes of WAL retained, %.0f ms behind; %d records published",
                 self.slot, unconfirmed, retained, self.behind_ms, self.published)
        self.last_report = time.monotonic()

    def round(self) -> None:
        txns = self.read()
        if not txns:
            self.behind_ms = 0.0
            if time.monotonic() - self.last_heartbeat > 1:
                self.heartbeat()
            stopping.wait(self.idle_ms / 1000)
            return
        self.broken = False
        self.publish(txns)
        upto = self.acknowledged_up_to(txns)
        if upto is not None:
            self.advance(upto)  # only now: everything up to here is in Kafka
            acked = txns[:next((i for i, t in enumerate(txns) if t.failed), len(txns))]
            self.published += sum(len(t.rows) for t in acked)
            self.behind_ms = (datetime.now(timezone.utc) - txns[0].commit_time).total_seconds() * 1000
        if self.broken:
            log.warning("replacing the Kafka producer after a fatal delivery error")
            self.producer = self.new_producer()
        if upto is None or any(t.failed for t in txns):
            stopping.wait(0.5)  # Kafka is unhappy: do not spin; the slot still holds everything

    def run(self) -> None:
        log.info("relaying slot %s (publication %s) to %s", self.slot, self.publication, events.topic_for("<type>"))
        attempt = 0
        while not stopping.is_set():
            try:
                if self.conn.closed:
                    self.conn = self.connect()
                self.round()
                attempt = 0
                if time.monotonic() - self.last_report > 5:
                    self.report()
            except psycopg.OperationalError as e:
                attempt += 1
                log.warning("database error (attempt %d): %s; reconnecting", attempt, e)
                self.conn.close()
                stopping.wait(min(0.2 * attempt, 2))
        self.producer.flush(5)
        self.conn.close()
        log.info("stopped after %d records", self.published)


def main() -> None:
    install_signal_handlers()  # first: a SIGTERM while connecting still ends in a clean exit 0
    setup_telemetry("cdc_relay")
    Relay().run()
