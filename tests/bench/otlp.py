"""OTLP receiver benchmark (not a test): spans per second, same run, same batches.

    python -m tests.bench.otlp [--spans 20000] [--batch 512] [--rounds 3] [--smoke]

Prints, for the OTLP/HTTP exporter (opentelemetry-exporter-otlp, protobuf):
  - a raw exporter loop to a null sink (an HTTP server that reads the body and answers 200): the
    cost of the exporter and HTTP alone;
  - the same loop to the grader's receiver (decode with opentelemetry-proto, record one history
    event per span); and the receiver's ratio to the null sink;
  - the same over OTLP/gRPC to the receiver;
  - decoding alone (parse_body + decode_request on the same bytes, no HTTP).
Exporters send one batch at a time, as a BatchSpanProcessor does.
"""
from __future__ import annotations

import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from grader.history import History
from grader.otlp import OtlpReceiver, decode_request, parse_body
from tests.bench.figures import Figure, main_for

SIZES = {"spans": 20000, "batch": 512}  # 512: the BatchSpanProcessor's default export size
SMOKE = {"spans": 200, "batch": 50}


def make_spans(n: int):
    """Spans shaped like lab 1's: a server span, a producer child with messaging attributes."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "order_api"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("bench")
    for i in range(n // 2):
        with tracer.start_as_current_span("POST /orders", kind=trace.SpanKind.SERVER,
                                          attributes={"http.request.method": "POST", "http.route": "/orders",
                                                      "http.response.status_code": 201}):
            with tracer.start_as_current_span("send orders", kind=trace.SpanKind.PRODUCER,
                                              attributes={"messaging.system": "kafka", "order.event_id": f"e-{i}",
                                                          "messaging.destination.name": "orders",
                                                          "messaging.operation.type": "send"}):
                pass
    provider.shutdown()
    return list(exporter.get_finished_spans())


class NullSink(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def export_rate(exporter, batches) -> float:
    t0 = time.perf_counter()
    for batch in batches:
        assert exporter.export(batch).name == "SUCCESS"
    return sum(map(len, batches)) / (time.perf_counter() - t0)


def one_round(spans: int, batch: int) -> list[Figure]:
    made = make_spans(spans)
    batches = [made[i:i + batch] for i in range(0, len(made), batch)]
    sink = NullSink()
    null = OTLPSpanExporter(endpoint=sink.endpoint + "/v1/traces", timeout=30)
    raw = export_rate(null, batches)
    null.shutdown()
    sink.shutdown()

    with OtlpReceiver(History()) as receiver:
        http = OTLPSpanExporter(endpoint=receiver.endpoint + "/v1/traces", timeout=30)
        received = export_rate(http, batches)
        http.shutdown()
        grpc = GrpcExporter(endpoint=receiver.grpc_endpoint, insecure=True, timeout=30)
        received_grpc = export_rate(grpc, batches)
        grpc.shutdown()
        assert len(receiver.spans()) == len(made) * 2  # a benchmark that lost spans measured nothing

    bodies = [encode_spans(b).SerializeToString() for b in batches]
    t0 = time.perf_counter()
    n = sum(len(decode_request(parse_body(body, "application/x-protobuf"))) for body in bodies)
    decoded = n / (time.perf_counter() - t0)
    print(f"  otlp: null sink {raw:,.0f}, receiver HTTP {received:,.0f}, gRPC {received_grpc:,.0f}, decode only "
          f"{decoded:,.0f} spans/s ({len(made)} spans in batches of {batch})", flush=True)
    return [Figure("exporter -> grader receiver (HTTP)", received, "spans/s", "exporter -> null sink (HTTP)", raw),
            Figure("exporter -> grader receiver (gRPC)", received_grpc, "spans/s", "exporter -> null sink (HTTP)", raw),
            Figure("decode + Span objects only", decoded, "spans/s")]


if __name__ == "__main__":
    main_for("otlp", sys.modules[__name__])
