"""The grader's own OTLP trace receiver, one per run, on free 127.0.0.1 ports.

OTLP/HTTP: `POST /v1/traces` with a binary protobuf (`application/x-protobuf`) or JSON
(`application/json`) `ExportTraceServiceRequest`, optionally `Content-Encoding: gzip`. JSON follows
the OTLP/JSON rules: proto3 JSON mapping, except that trace and span ids are hex strings (not
base64). Decoding is opentelemetry-proto's; only the ids are rewritten before it parses.

Answers: 200 with an empty `ExportTraceServiceResponse` (same encoding as the request); 400 for a
body that does not decode (the receiver goes on serving); 413 for a body over `max_body` bytes
(default 8 MiB, compressed or after decompression); 411 without a Content-Length; 415 for another
content type or encoding; 404 for another path. `/v1/metrics` and `/v1/logs` answer 200 and are
dropped (an SDK configured for every signal must not log errors; only traces are judged). The OTLP exporters do not retry 400/413, so one bad
batch never blocks the rest.

OTLP/gRPC (`TraceService/Export`) listens on a second port when grpcio is importable (it comes with
opentelemetry-exporter-otlp); services get the HTTP endpoint by default (`env()`).

Each span is recorded in the history as one `span` event (see `spans.Span.record`); rejected bodies
as `note` events, so a run's evidence says when a service's spans were refused.
"""
from __future__ import annotations

import base64
import json
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                        ExportTraceServiceResponse)

from .spans import SPAN_EVENT, Span, decode_request

MAX_BODY = 8 * 1024 * 1024
TRACES_PATH = "/v1/traces"
OTHER_SIGNALS = ("/v1/metrics", "/v1/logs")  # a service exporting these too gets a 200, nothing is kept
PROTOBUF, JSON = "application/x-protobuf", "application/json"


class BodyError(ValueError):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def parse_body(body: bytes, content_type: str, content_encoding: str = "",
               max_body: int = MAX_BODY) -> ExportTraceServiceRequest:
    """An OTLP/HTTP trace request body as a protobuf message, or BodyError(status, reason)."""
    encoding = content_encoding.strip().lower()
    if encoding == "gzip":
        body = gunzip(body, max_body)
    elif encoding not in ("", "identity"):
        raise BodyError(415, f"unsupported Content-Encoding {content_encoding!r} (gzip or none)")
    media = content_type.split(";")[0].strip().lower()
    if media == PROTOBUF:
        try:
            return ExportTraceServiceRequest.FromString(body)
        except DecodeError as e:
            raise BodyError(400, f"not an ExportTraceServiceRequest: {e}") from None
    if media == JSON:
        try:
            data = json.loads(body)
            if not isinstance(data, dict):
                raise ValueError("the body is not a JSON object")
            return json_format.ParseDict(ids_as_base64(data), ExportTraceServiceRequest(), ignore_unknown_fields=True)
        except (ValueError, TypeError, json_format.ParseError) as e:
            raise BodyError(400, f"not an OTLP/JSON ExportTraceServiceRequest: {e}") from None
    raise BodyError(415, f"unsupported Content-Type {content_type!r} ({PROTOBUF} or {JSON})")


def gunzip(body: bytes, max_body: int) -> bytes:
    """Decompress, refusing more than max_body bytes of output (a small bomb stays small)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, max_body + 1)
    except zlib.error as e:
        raise BodyError(400, f"bad gzip body: {e}") from None
    if len(out) > max_body or inflater.unconsumed_tail:
        raise BodyError(413, f"the decompressed body is over {max_body} bytes")
    if not inflater.eof:
        raise BodyError(400, "truncated gzip body")
    return out


_ID_FIELDS = ("traceId", "trace_id", "spanId", "span_id", "parentSpanId", "parent_span_id")


def ids_as_base64(data: dict) -> dict:
    """OTLP/JSON writes ids as hex; the proto3 JSON mapping expects base64 for bytes fields."""
    for resource_spans in _items(data, "resourceSpans", "resource_spans"):
        for scope_spans in _items(resource_spans, "scopeSpans", "scope_spans"):
            for span in _items(scope_spans, "spans"):
                _rewrite_ids(span)
                for link in _items(span, "links"):
                    _rewrite_ids(link)
    return data


def _items(obj: Any, *names: str) -> list:
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    for name in names:
        if name in obj:
            items = obj[name]
            if not isinstance(items, list):
                raise ValueError(f"{name} must be a list")
            return items
    return []


def _rewrite_ids(obj: Any) -> None:
    if not isinstance(obj, dict):
        raise ValueError("a span or link must be a JSON object")
    for name in _ID_FIELDS:
        if name in obj:
            try:
                obj[name] = base64.b64encode(bytes.fromhex(obj[name])).decode()
            except (TypeError, ValueError):
                raise ValueError(f"{name} {obj[name]!r} is not a hex id") from None


class OtlpReceiver:
    """Collects spans over OTLP into `history` (and its own list). Use `with OtlpReceiver(h) as r:`."""

    def __init__(self, history=None, *, grpc: bool = True, max_body: int = MAX_BODY, actor: str = "otlp") -> None:
        self.history, self.max_body, self.actor = history, max_body, actor
        self.want_grpc = grpc
        self.requests = 0  # accepted export requests (HTTP and gRPC)
        self.rejected = 0  # refused HTTP bodies (400/411/413/415)
        self._spans: list[Span] = []
        self._lock = threading.Lock()
        self._http: ThreadingHTTPServer | None = None
        self._grpc = None
        self.grpc_port: int | None = None

    # lifecycle
    def start(self) -> "OtlpReceiver":
        self._http = _HttpServer(self)
        threading.Thread(target=self._http.serve_forever, args=(0.05,), name="otlp-http", daemon=True).start()
        if self.want_grpc:
            self._start_grpc()
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._grpc is not None:
            self._grpc.stop(grace=1).wait(5)
            self._grpc = None

    def __enter__(self) -> "OtlpReceiver":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _start_grpc(self) -> None:
        try:
            from .grpc import start_grpc_server
        except ImportError:  # grpcio missing: HTTP only (the services use HTTP anyway)
            return
        self._grpc, self.grpc_port = start_grpc_server(self)

    # what callers read
    @property
    def port(self) -> int:
        assert self._http is not None, "the receiver is not started"
        return self._http.server_address[1]

    @property
    def endpoint(self) -> str:
        """The OTLP/HTTP base URL: exporters append /v1/traces."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_endpoint(self) -> str | None:
        return f"http://127.0.0.1:{self.grpc_port}" if self.grpc_port else None

    def env(self, protocol: str = "http/protobuf", schedule_delay_ms: int = 200) -> dict[str, str]:
        """The env for a service exporting here. A short batch delay gets spans here within a fraction
        of a second; a shutdown check passes a long one, so only a flush at exit can deliver them."""
        if protocol == "grpc":
            if not self.grpc_endpoint:
                raise RuntimeError("the gRPC receiver is not running (grpcio missing or grpc=False)")
            endpoint = self.grpc_endpoint
        elif protocol in ("http/protobuf", "http/json"):
            endpoint = self.endpoint
        else:
            raise ValueError(f"unknown OTLP protocol {protocol!r}")
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
                "OTEL_TRACES_EXPORTER": "otlp", "OTEL_BSP_SCHEDULE_DELAY": str(schedule_delay_ms)}

    def spans(self) -> list[Span]:
        with self._lock:
            return list(self._spans)

    # what the servers call
    def accept(self, request: ExportTraceServiceRequest) -> int:
        spans = decode_request(request)
        with self._lock:
            self._spans += spans
            self.requests += 1
        if self.history is not None:
            for span in spans:
                self.history.record(SPAN_EVENT, self.actor, **span.record())
        return len(spans)

    def refuse(self, status: int, reason: str) -> None:
        with self._lock:
            self.rejected += 1
        if self.history is not None:
            self.history.record("note", self.actor, message=f"OTLP body refused with HTTP {status}: {reason}")


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, receiver: OtlpReceiver) -> None:
        self.receiver = receiver
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the exporters reuse one connection
    server: _HttpServer

    def do_POST(self) -> None:
        receiver = self.server.receiver
        path = self.path.split("?")[0]
        if path not in (TRACES_PATH, *OTHER_SIGNALS):
            return self._refuse(404, f"only {TRACES_PATH} is served here", drain=False)
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            return self._refuse(411, "a Content-Length is required", drain=False)
        if int(length) > receiver.max_body:
            return self._refuse(413, f"the body is {length} bytes, over the {receiver.max_body}-byte limit",
                                drain=False)
        body = self.rfile.read(int(length))
        content_type = self.headers.get("Content-Type", "")
        if path in OTHER_SIGNALS:  # accepted and dropped: the checks judge traces only
            return self._answer(200, JSON, b"{}") if content_type.startswith(JSON) else self._answer(200, PROTOBUF, b"")
        try:
            request = parse_body(body, content_type, self.headers.get("Content-Encoding", ""), receiver.max_body)
        except BodyError as e:
            return self._refuse(e.status, e.reason, drain=True)
        receiver.accept(request)
        if content_type.split(";")[0].strip().lower() == JSON:
            self._answer(200, JSON, json_format.MessageToJson(ExportTraceServiceResponse()).encode())
        else:
            self._answer(200, PROTOBUF, ExportTraceServiceResponse().SerializeToString())

    def _refuse(self, status: int, reason: str, drain: bool) -> None:
        self.server.receiver.refuse(status, reason)
        if not drain:  # the body was not read: the connection cannot carry another request
            self.close_connection = True
        self._answer(status, "text/plain; charset=utf-8", reason.encode())

    def _answer(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # the history records what matters
        pass
