"""OpenTelemetry setup: export over OTLP/HTTP only when OTEL_EXPORTER_OTLP_ENDPOINT is set."""
from __future__ import annotations

import atexit
import os

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


def setup(service: str) -> trace.Tracer:
    name = os.environ.get("OTEL_SERVICE_NAME", service)
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") and not isinstance(trace.get_tracer_provider(), TracerProvider):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider = TracerProvider(resource=Resource.create({"service.name": name}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
        atexit.register(provider.shutdown)  # flush buffered spans on a clean exit (SIGTERM included)
    return trace.get_tracer(name)


def inject_headers() -> list[tuple[str, bytes]]:
    """The current trace context as Kafka headers (W3C traceparent), so a consumer can continue it."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return [(k, v.encode()) for k, v in carrier.items()]


def extract_headers(headers: list[tuple[str, bytes | None]] | None) -> Context:
    """The trace context a producer put into a record's headers (an empty context if none)."""
    return propagate.extract({k: v.decode(errors="replace") for k, v in headers or [] if v is not None})


def messaging_attributes(operation: str, topic: str, msg_key: bytes | None = None) -> dict[str, str]:
    """OpenTelemetry messaging semantic conventions (the current names, not the pre-1.24 ones)."""
    attrs = {"messaging.system": "kafka", "messaging.operation.type": operation,
             "messaging.destination.name": topic}
    if msg_key is not None:
        attrs["messaging.kafka.message.key"] = msg_key.decode(errors="replace")
    return attrs
