"""OpenTelemetry setup: export over OTLP/HTTP only when OTEL_EXPORTER_OTLP_ENDPOINT is set."""
from __future__ import annotations

import atexit
import os

from opentelemetry import trace
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
