"""The grader's OTLP receiver: protobuf, JSON (hex ids), gzip, refused bodies (400/411/413/415,
the receiver keeps serving), the real OTLP exporters (HTTP and gRPC), and spans into the history."""
from __future__ import annotations

import gzip
import json

import httpx
import pytest
from google.protobuf import json_format
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from grader.history import History
from grader.otlp import MAX_BODY, OtlpReceiver, Span, spans_from_history

PROTOBUF = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}


def sdk_spans(service: str = "svc"):
    """A server span with a child producer (error status, event, link, attributes of every type)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("POST /orders", kind=trace.SpanKind.SERVER,
                                      attributes={"http.request.method": "POST", "n": 3, "f": 0.5, "ok": True,
                                                  "tags": ["a", "b"]}) as server:
        link = trace.Link(server.get_span_context(), {"why": "test"})
        with tracer.start_as_current_span("send orders", kind=trace.SpanKind.PRODUCER, links=[link]) as producer:
            producer.add_event("retry", {"attempt": 2})
            producer.set_status(trace.StatusCode.ERROR, "broker down")
    provider.shutdown()
    return exporter.get_finished_spans()


def request_bytes(service: str = "svc") -> bytes:
    return encode_spans(sdk_spans(service)).SerializeToString()


def otlp_json(service: str = "svc") -> bytes:
    """The OTLP/JSON form: proto3 JSON, but ids as hex (as the spec and the collector write them)."""
    data = json_format.MessageToDict(encode_spans(sdk_spans(service)))
    for rs in data["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                for obj in [span, *span.get("links", [])]:
                    for k in ("traceId", "spanId", "parentSpanId"):
                        if k in obj:
                            obj[k] = __import__("base64").b64decode(obj[k]).hex()
    return json.dumps(data).encode()


@pytest.fixture()
def history():
    return History()


@pytest.fixture()
def receiver(history):
    with OtlpReceiver(history, grpc=False, max_body=64 * 1024) as r:
        yield r


def post(receiver, body: bytes, headers: dict) -> httpx.Response:
    return httpx.post(receiver.endpoint + "/v1/traces", content=body, headers=headers, timeout=10)


def assert_two_spans(spans: list[Span]) -> None:
    by_kind = {s.kind: s for s in spans}
    assert set(by_kind) == {"SERVER", "PRODUCER"}
    server, producer = by_kind["SERVER"], by_kind["PRODUCER"]
    assert len(server.trace_id) == 32 and len(server.span_id) == 16 and server.parent_span_id == ""
    assert producer.trace_id == server.trace_id and producer.parent_span_id == server.span_id
    assert server.service == "svc" and server.name == "POST /orders"
    assert server.attributes == {"http.request.method": "POST", "n": 3, "f": 0.5, "ok": True, "tags": ["a", "b"]}
    assert producer.status == {"code": "ERROR", "message": "broker down"}
    assert producer.events[0]["name"] == "retry" and producer.events[0]["attributes"] == {"attempt": 2}
    assert producer.links == ({"trace_id": server.trace_id, "span_id": server.span_id, "attributes": {"why": "test"}},)
    assert server.start <= producer.start <= producer.end <= server.end and server.start > 1_600_000_000 * 10**9


def test_protobuf_body_is_decoded_into_the_history(receiver, history, tmp_path):
    r = post(receiver, request_bytes(), PROTOBUF)
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-protobuf"
    assert_two_spans(receiver.spans())
    assert [e.actor for e in history.events("span")] == ["otlp", "otlp"]
    history.dump_jsonl(tmp_path / "history.jsonl")  # re-judging a saved run sees the same spans
    assert spans_from_history(History.load_jsonl(tmp_path / "history.jsonl")) == spans_from_history(history)
    assert spans_from_history(history) == receiver.spans()


def test_json_body_with_hex_ids(receiver):
    r = post(receiver, otlp_json(), {"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text
    assert_two_spans(receiver.spans())


def test_json_body_written_by_hand_per_the_spec(receiver):
    """Enum as a name or a number, int64 as a string, lowerCamelCase keys, unknown fields ignored."""
    body = {"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "api"}}]},
                               "scopeSpans": [{"scope": {"name": "x"}, "spans": [
                                   {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
                                    "parentSpanId": "", "name": "GET /", "kind": "SPAN_KIND_SERVER",
                                    "startTimeUnixNano": "1544712660000000000", "endTimeUnixNano": 1544712661000000000,
                                    "attributes": [{"key": "k", "value": {"intValue": "7"}}],
                                    "status": {"code": 2}, "someFutureField": 1}]}]}]}
    assert post(receiver, json.dumps(body).encode(), JSON).status_code == 200
    (span,) = receiver.spans()
    assert (span.trace_id, span.span_id, span.kind, span.service) == (
        "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174", "SERVER", "api")
    assert span.attributes == {"k": 7} and span.status["code"] == "ERROR" and span.duration_ns == 10**9


def test_gzip_bodies(receiver):
    assert post(receiver, gzip.compress(request_bytes()), {**PROTOBUF, "Content-Encoding": "gzip"}).status_code == 200
    assert post(receiver, gzip.compress(otlp_json()), {**JSON, "Content-Encoding": "gzip"}).status_code == 200
    assert len(receiver.spans()) == 4


@pytest.mark.parametrize("body, headers", [
    (b"\xff\xff\xff not protobuf", PROTOBUF),
    (b"{not json", JSON),
    (b"[1, 2]", JSON),
    (json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}).encode(), JSON),
    (json.dumps({"resourceSpans": "nope"}).encode(), JSON),
    (b"not gzip at all", {**PROTOBUF, "Content-Encoding": "gzip"}),
    (gzip.compress(request_bytes())[:-8], {**PROTOBUF, "Content-Encoding": "gzip"}),
], ids=["protobuf", "json-syntax", "json-not-object", "json-bad-hex-id", "json-wrong-shape", "gzip", "gzip-truncated"])
def test_malformed_body_is_400_and_the_receiver_goes_on(receiver, history, body, headers):
    r = post(receiver, body, headers)
    assert r.status_code == 400, r.text
    assert receiver.rejected == 1 and "400" in history.events("note")[0].data["message"]
    assert post(receiver, request_bytes(), PROTOBUF).status_code == 200
    assert len(receiver.spans()) == 2


def test_oversized_bodies_are_413(receiver):
    big = b"\0" * (receiver.max_body + 1)
    assert post(receiver, big, PROTOBUF).status_code == 413
    # a small gzip body that inflates past the cap (a "zip bomb") is refused as well
    assert post(receiver, gzip.compress(big), {**PROTOBUF, "Content-Encoding": "gzip"}).status_code == 413
    assert post(receiver, request_bytes(), PROTOBUF).status_code == 200
    assert receiver.rejected == 2
    assert MAX_BODY == 8 * 1024 * 1024  # the documented default cap


def test_other_refusals(receiver):
    assert post(receiver, request_bytes(), {"Content-Type": "text/plain"}).status_code == 415
    assert post(receiver, request_bytes(), {**PROTOBUF, "Content-Encoding": "br"}).status_code == 415
    assert httpx.post(receiver.endpoint + "/v1/profiles", content=b"x", headers=PROTOBUF).status_code == 404
    assert httpx.post(receiver.endpoint + "/v1/metrics", content=b"x", headers=PROTOBUF).status_code == 200  # dropped
    assert post(receiver, request_bytes(), PROTOBUF).status_code == 200


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip], ids=["plain", "gzip"])
def test_the_real_http_exporter(receiver, compression):
    exporter = OTLPSpanExporter(endpoint=receiver.endpoint + "/v1/traces", compression=compression, timeout=10)
    assert exporter.export(sdk_spans()).name == "SUCCESS"
    exporter.shutdown()
    assert_two_spans(receiver.spans())


def test_the_real_grpc_exporter(history):
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

    with OtlpReceiver(history) as receiver:
        assert receiver.grpc_endpoint and receiver.env("grpc")["OTEL_EXPORTER_OTLP_ENDPOINT"] == receiver.grpc_endpoint
        exporter = GrpcExporter(endpoint=receiver.grpc_endpoint, insecure=True, timeout=10)
        assert exporter.export(sdk_spans()).name == "SUCCESS"
        exporter.shutdown()
        assert_two_spans(receiver.spans())
        assert len(history.events("span")) == 2


def test_env_for_services(receiver):
    env = receiver.env()
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == receiver.endpoint.rstrip("/")
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf" and env["OTEL_BSP_SCHEDULE_DELAY"] == "200"
    assert receiver.env(schedule_delay_ms=60000)["OTEL_BSP_SCHEDULE_DELAY"] == "60000"
    with pytest.raises(RuntimeError):
        receiver.env("grpc")  # this one was started without gRPC


def test_stop_frees_the_port(history):
    receiver = OtlpReceiver(history).start()
    url = receiver.endpoint + "/v1/traces"
    receiver.stop()
    with pytest.raises(httpx.HTTPError):
        httpx.post(url, content=request_bytes(), headers=PROTOBUF, timeout=2)


def empty_spans(n: int, service: str = "svc") -> bytes:
    """One request of `n` empty spans (two bytes each on the wire: a flood from a small body)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = service
    scope = rs.scope_spans.add()
    for _ in range(n):
        scope.spans.add()
    return request.SerializeToString()


def test_spans_over_the_runs_limit_are_counted_dropped_and_noted(history):
    from grader.otlp import ReceiverLimits, capped_limits

    with OtlpReceiver(history, grpc=False, limits=ReceiverLimits(max_spans=50)) as receiver:
        for _ in range(3):  # answered 200 (the exporter must not retry), kept up to the limit
            assert post(receiver, empty_spans(40), PROTOBUF).status_code == 200
        assert len(receiver.spans()) == 50 and len(history.events("span")) == 50
        assert receiver.received_spans == 80 and receiver.dropped_spans == 30 and receiver.dropped_requests == 1
        notes = capped_limits(history)
        assert len(notes) == 1 and "more than 50 spans" in notes[0]


def test_span_bytes_limit(history):
    from grader.otlp import ReceiverLimits

    with OtlpReceiver(history, grpc=False, limits=ReceiverLimits(max_span_bytes=2000)) as receiver:
        body = request_bytes()
        with httpx.Client(timeout=10) as client:
            for _ in range(20):
                client.post(receiver.endpoint + "/v1/traces", content=body, headers=PROTOBUF)
        assert 0 < len(receiver.spans()) < 40 and receiver.capped == {"span_bytes"}


def test_connections_are_capped_on_one_thread(history):
    """A flood of connections costs the grader no thread each: over the limit they are closed at once,
    the receiver still serves, and the history says it was capped."""
    import socket
    import threading
    import time

    from grader.otlp import ReceiverLimits

    with OtlpReceiver(history, grpc=False, limits=ReceiverLimits(max_connections=4)) as receiver:
        threads_before = threading.active_count()
        held = [socket.create_connection(("127.0.0.1", receiver.port), timeout=5) for _ in range(30)]
        deadline = time.monotonic() + 30
        while receiver.refused_connections < 26 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert receiver.refused_connections == 26
        assert threading.active_count() == threads_before
        for sock in held:
            sock.close()
        deadline = time.monotonic() + 30
        while receiver._http.open and time.monotonic() < deadline:
            time.sleep(0.02)
        assert post(receiver, request_bytes(), PROTOBUF).status_code == 200
        assert [e.data["otlp_capped"] for e in history.events("note") if e.data.get("otlp_capped")] == ["connections"]


def test_refusals_are_noted_a_bounded_number_of_times(receiver, history):
    from grader.otlp.receiver import MAX_REFUSAL_NOTES

    with httpx.Client(timeout=10) as client:
        for _ in range(MAX_REFUSAL_NOTES + 10):
            client.post(receiver.endpoint + "/v1/traces", content=b"\xff" * 5000, headers=PROTOBUF)
    notes = history.events("note")
    assert len(notes) == MAX_REFUSAL_NOTES + 1 and all(len(n.data["message"]) < 400 for n in notes)
