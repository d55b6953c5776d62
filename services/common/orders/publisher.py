"""Publish one event and wait for the broker's acknowledgement (or give up in bounded time)."""
from __future__ import annotations

import threading

from confluent_kafka import KafkaError, KafkaException
from opentelemetry import trace

from services.common import kafka
from services.common.config import env_int
from services.common.log import get_logger
from services.common.telemetry import inject_headers, messaging_attributes

from .events import encode

log = get_logger("order_api")
tracer = trace.get_tracer("order_api")


# Errors after which this producer's id/epoch is unusable for good. Seen on Tansu: once a message
# timed out during a network cut, every later produce fails PRODUCER_FENCED. Only a new producer
# (a new producer id) recovers; the retry with the same event_id keeps that safe.
STUCK = {KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH, KafkaError.UNKNOWN_PRODUCER_ID,
         KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER}


class PublishError(RuntimeError):
    pass


class Publisher:
    """An idempotent producer (acks=all) shared by request threads, polled by its own thread."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.timeout_ms = env_int("ORDER_API_PUBLISH_TIMEOUT_MS", 5000)
        self._producer = self._new_producer()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._poll, name="producer-poll", daemon=True).start()

    def _new_producer(self):
        # message.timeout.ms: librdkafka itself gives up when we do, so a 503 really means "not sent".
        return kafka.producer(**{"message.timeout.ms": self.timeout_ms, "linger.ms": 1})

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.1)

    def publish(self, event: dict) -> None:
        """Return once the broker acknowledged `event`; raise PublishError otherwise."""
        with tracer.start_as_current_span(f"send {self.topic}", kind=trace.SpanKind.PRODUCER,
                                          attributes=messaging_attributes("send", self.topic,
                                                                          event["order_id"].encode())) as span:
            span.set_attribute("order.event_id", event["event_id"])
            try:
                self._publish(event)
            except PublishError as e:
                span.set_status(trace.StatusCode.ERROR, str(e))
                raise

    def _publish(self, event: dict) -> None:
        done = threading.Event()
        outcome: list = []

        def delivered(err, msg) -> None:
            outcome.append(err)
            done.set()

        key, value, headers = encode(event)
        headers += inject_headers()
        try:
            with self._lock:
                producer = self._producer
                producer.produce(self.topic, key=key, value=value, headers=headers, on_delivery=delivered)
        except (KafkaException, BufferError) as e:
            raise PublishError(str(e)) from e
        if not done.wait(self.timeout_ms / 1000 + 2):
            raise PublishError("no delivery report in time")
        err = outcome[0]
        if err is not None:
            if err.fatal() or err.code() in STUCK:
                self._replace(producer, err)
            raise PublishError(str(err))

    def _replace(self, broken, err) -> None:
        with self._lock:
            if self._producer is broken:  # once, however many requests saw the error
                log.warning("producer error %s; replacing the producer", err)
                self._producer = self._new_producer()
                threading.Thread(target=broken.flush, args=(self.timeout_ms / 1000,), daemon=True).start()

    def send_nowait(self, event: dict) -> None:
        """Hand the event to the client library and return at once: NOT a guarantee it is stored."""
        key, value, headers = encode(event)
        with self._lock:
            self._producer.produce(self.topic, key=key, value=value, headers=headers)

    def close(self) -> None:
        self._producer.flush(5)
        self._stop.set()
