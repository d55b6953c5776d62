"""OpenTelemetry setup: export over OTLP only when OTEL_EXPORTER_OTLP_ENDPOINT is set.

The protocol follows OTEL_EXPORTER_OTLP_PROTOCOL (http/protobuf by default, grpc if asked). Spans
are batched; the provider is shut down at exit, which exports what the batch still holds - so a
service that returns normally on SIGTERM loses no spans (a SIGKILL loses the batch).
"""
from __future__ import annotations

import atexit
import os
from typing import Mapping

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter


def setup(service: str) -> trace.Tracer:
    name = os.environ.get("OTEL_SERVICE_NAME", service)
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") and not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider(resource=Resource.create({"service.name": name}))
        provider.add_span_processor(BatchSpanProcessor(_exporter()))
        trace.set_tracer_provider(provider)
        atexit.register(provider.shutdown)  # flush buffered spans on a clean exit (SIGTERM included)
    return trace.get_tracer(name)


def _exporter() -> SpanExporter:
    if os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf").strip() == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # http/protobuf (the Python exporter has no http/json)


def extract_http(headers: Mapping[str, str]) -> Context:
    """The caller's trace context from HTTP request headers (W3C traceparent), so a SERVER span
    continues the client's trace instead of starting a new one."""
    return propagate.extract(headers)


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
