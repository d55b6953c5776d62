"""CDC relay (lab 2 reference): committed outbox rows -> Kafka, at least once, in commit order.

It streams the outbox's inserts from PostgreSQL's write-ahead log over a logical replication
connection (plugin `pgoutput`, a publication for the outbox table only), from a replication slot.
The slot remembers how far this relay got (`confirmed_flush_lsn`); it is the relay's only state.
One round:

  1. read    the transactions the server streamed since the last round (whole transactions:
             pgoutput sends each one at its commit, in commit order);
  2. send    each row as a routed record (topic `<ns>.outbox.event.<aggregatetype>`, key
             `aggregateid`, value `payload`, headers `id`, `type`, `traceparent`), in that order;
  3. wait    for Kafka's delivery reports (producer.flush);
  4. confirm to the server the end of the last transaction whose records were ALL acknowledged,
             and of every transaction before it: the slot advances there. Nothing else moves it.

A crash anywhere means the next life streams from the slot's position again and re-sends:
duplicates (consumers dedupe by the `id` header), never a loss. A failed send does the same on
purpose: the stream is reopened at the slot's position. Why streaming and not the simpler SQL
functions (pg_logical_slot_peek_binary_changes + pg_replication_slot_advance): see the lab README,
"Reading the log" - at 500 orders/s the SQL functions re-read megabytes of WAL on every call.
"""
from __future__ import annotations

import select
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import psycopg
import psycopg2
import psycopg2.extras
from confluent_kafka import KafkaError, Message
from opentelemetry import propagate, trace

from services.common import db, kafka
from services.common.config import env, env_int
from services.common.lifecycle import install_signal_handlers, stopping
from services.common.log import get_logger
from services.common.outbox import events, schema
from services.common.outbox.pgoutput import Begin, Commit, Decoder, Insert
from services.common.telemetry import inject_headers, messaging_attributes
from services.common.telemetry import setup as setup_telemetry

log = get_logger("cdc_relay")
tracer = trace.get_tracer("cdc_relay")

SLOT_LAG = """SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,
                     pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint
              FROM pg_replication_slots WHERE slot_name = %s"""
HEARTBEAT_PREFIX = "labkit.relay.heartbeat"
START_ATTEMPTS = 10  # start-up tries while PostgreSQL restarts (each also retries its connect for 30 s)
# After a failed delivery librdkafka's idempotent producer can stay unusable (seen on Tansu: every
# later send fails PRODUCER_FENCED); a new producer recovers. Re-sending is safe: consumers dedupe.
STUCK = {KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH, KafkaError.UNKNOWN_PRODUCER_ID,
         KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER}


@dataclass
class Transaction:
    """One committed transaction from the stream: its outbox rows and where it ends in the WAL."""

    commit_time: datetime
    end_lsn: int = 0
    rows: list[dict] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # delivery errors of its records


class Relay:
    def __init__(self) -> None:
        self.batch_rows = env_int("RELAY_BATCH_ROWS", 2000)
        self.timeout_ms = env_int("RELAY_DELIVERY_TIMEOUT_MS", 5000)  # the lab's contract (lab.toml)
        self.conn, (self.slot, self.publication) = self.prepare()  # tables, slot, lag, heartbeats (psycopg 3)
        self.stream = None  # the replication connection (psycopg2), opened by open_stream()
        self.producer = self.new_producer()
        self.broken = False  # set by a delivery report: this producer cannot recover
        self.published = 0
        self.behind_ms = 0.0  # commit -> acknowledged, oldest transaction of the last batch
        self.last_heartbeat = self.last_report = time.monotonic()

    @staticmethod
    def prepare(attempts: int = START_ATTEMPTS) -> tuple[psycopg.Connection, tuple[str, str]]:
        """Connect, create the tables, the publication and the slot: a PostgreSQL restart while this
        runs breaks the connection midway, so the whole step is tried again (all of it is safe to
        repeat), up to `attempts` times, like every later database error of the main loop."""
        for attempt in range(1, attempts + 1):
            conn = None
            try:
                conn = db.connect(autocommit=True)
                schema.create_schema(conn)
                return conn, schema.ensure_replication(conn)
            except psycopg.OperationalError as e:
                if conn is not None:
                    conn.close()
                if attempt == attempts or stopping.is_set():
                    raise
                log.warning("database error while starting (attempt %d of %d): %s; trying again", attempt, attempts, e)
                stopping.wait(min(0.5 * attempt, 3))
        raise AssertionError("unreachable")

    def new_producer(self):
        # message.timeout.ms bounds how long a send may take: every record gets a report in time.
        return kafka.producer(**{"linger.ms": 2, "message.timeout.ms": self.timeout_ms})

    def open_stream(self) -> None:
        """(Re)start streaming at the slot's confirmed position: the server sends every transaction
        committed after it, in commit order, and then new ones as they commit."""
        self.close_stream()
        connection = psycopg2.connect(env("DATABASE_URL"), connect_timeout=10,
                                      connection_factory=psycopg2.extras.LogicalReplicationConnection)
        self.stream = connection.cursor()
        self.stream.start_replication(slot_name=self.slot, decode=False, status_interval=1, options={
            "proto_version": "1", "publication_names": self.publication, "messages": "true"})
        self.decoder, self.open_txn = Decoder(), None

    def close_stream(self) -> None:
        if self.stream is not None:
            self.stream.connection.close()
            self.stream = None

    # --- 1. read ---
    def read(self, wait: float) -> list[Transaction]:
        """Whole transactions received so far (waiting up to `wait` seconds for the first one)."""
        txns: list[Transaction] = []
        rows = 0
        deadline = time.monotonic() + wait
        while rows < self.batch_rows:
            msg = self.stream.read_message()  # never blocks; answers the server's keepalives too
            if msg is None:
                if txns and self.open_txn is None:
                    break  # nothing more right now: send what we have
                left = deadline - time.monotonic() if not txns else 0.05
                if left <= 0 or stopping.is_set():
                    break
                select.select([self.stream], [], [], min(left, 0.1))
                continue
            message = self.decoder.decode(msg.payload)
            if isinstance(message, Begin):
                self.open_txn = Transaction(message.commit_time)
            elif isinstance(message, Insert) and message.table.endswith(".outbox"):
                self.open_txn.rows.append(message.row)
                rows += 1
            elif isinstance(message, Commit):
                self.open_txn.end_lsn = message.end_lsn
                txns.append(self.open_txn)
                self.open_txn = None
        return txns

    # --- 2. and 3. send, wait for the acknowledgements ---
    def publish(self, txns: list[Transaction]) -> None:
        for txn in txns:
            for row in txn.rows:
                self.send(row, txn)
        if not any(txn.rows for txn in txns):
            return  # only heartbeats: nothing to wait for
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

    # --- 4. confirm ---
    def acknowledged_up_to(self, txns: list[Transaction]) -> int | None:
        """End LSN of the longest prefix of transactions whose records were all acknowledged."""
        upto = None
        for txn in txns:
            if txn.failed:
                log.warning("not acknowledged (will be re-sent): %s", txn.failed[0])
                break
            upto = txn.end_lsn
        return upto

    def confirm(self, lsn: int) -> None:
        """Tell the server everything up to `lsn` is done: the slot's confirmed_flush_lsn moves there
        (the SQL equivalent on an idle slot: SELECT pg_replication_slot_advance(slot, lsn))."""
        self.stream.send_feedback(write_lsn=lsn, flush_lsn=lsn, force=True)

    def heartbeat(self) -> None:
        """When only other tables are written, no outbox transaction comes whose end the relay could
        confirm, and the slot retains all their WAL. A logical message - a transaction of its own
        in the stream - gives it one. Debezium calls this a heartbeat (`heartbeat.action.query`)."""
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
        txns = self.read(wait=0.5)
        if not txns:
            self.behind_ms = 0.0
            if time.monotonic() - self.last_heartbeat > 1:
                self.heartbeat()
            return
        self.broken = False
        self.publish(txns)
        upto = self.acknowledged_up_to(txns)
        if upto is not None:
            self.confirm(upto)  # only now: everything up to here is in Kafka
            acked = txns[:next((i for i, t in enumerate(txns) if t.failed), len(txns))]
            self.published += sum(len(t.rows) for t in acked)
            self.behind_ms = (datetime.now(timezone.utc) - txns[0].commit_time).total_seconds() * 1000
        if self.broken:
            log.warning("replacing the Kafka producer after a fatal delivery error")
            self.producer = self.new_producer()
        if any(t.failed for t in txns):
            # The server has streamed past what Kafka did not take: start again at the slot's position.
            stopping.wait(0.5)  # Kafka is unhappy: do not spin
            self.open_stream()

    def run(self) -> None:
        log.info("streaming slot %s (publication %s) to %s", self.slot, self.publication,
                 events.topic_for("<aggregatetype>"))
        attempt = 0
        while not stopping.is_set():
            try:
                if self.conn.closed:
                    self.conn = db.connect(autocommit=True)
                if self.stream is None:
                    self.open_stream()
                self.round()
                attempt = 0
                if time.monotonic() - self.last_report > 5:
                    self.report()
            except (psycopg.OperationalError, psycopg2.Error) as e:  # a broken stream raises any of psycopg2's
                attempt += 1
                log.warning("database error (attempt %d): %s; reconnecting", attempt, e)
                self.conn.close()
                self.close_stream_quietly()
                stopping.wait(min(0.2 * attempt, 2))
        self.producer.flush(5)
        self.close_stream_quietly()
        self.conn.close()
        log.info("stopped after %d records", self.published)

    def close_stream_quietly(self) -> None:
        try:
            self.close_stream()
        except psycopg2.Error:
            self.stream = None


def main() -> None:
    install_signal_handlers()  # first: a SIGTERM while connecting still ends in a clean exit 0
    setup_telemetry("cdc_relay")
    Relay().run()
