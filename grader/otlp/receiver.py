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
as `note` events (the first few), so a run's evidence says when a service's spans were refused.

The receiver runs outside the sandbox, in the grader, and what it is sent is the submission's:
`ReceiverLimits` caps, per run, the spans and span bytes kept, each request's bytes (as sent and after
gzip), the connections open at once and how long one may idle. It is one thread (an asyncio event loop
with h11 for HTTP/1.1), whatever the submission opens. What goes over a limit is counted and dropped,
and the history gets one `note` with `otlp_capped` saying which limit, so a trace check can tell the
learner "your services sent more than N spans" rather than silently missing spans.
"""
from __future__ import annotations

import asyncio
import base64
import json
import threading
import zlib
from dataclasses import dataclass
from typing import Any

import h11

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                        ExportTraceServiceResponse)

from .spans import SPAN_EVENT, Span, decode_span, service_of

MAX_BODY = 8 * 1024 * 1024
MAX_REFUSAL_NOTES = 20  # refused bodies noted one by one in the history; past this, only counted
MAX_REASON = 300  # characters of a refusal's reason (decoder messages may quote the body)
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


@dataclass(frozen=True)
class ReceiverLimits:
    """What one run's services may make the grader's receiver hold."""

    max_body: int = MAX_BODY          # bytes of one request, as sent and after gzip (a bomb stays small)
    max_spans: int = 20_000           # spans kept per run (the references send a few hundred)
    max_span_bytes: int = 32 << 20    # encoded bytes of the spans kept per run
    max_connections: int = 16         # open at once; one more is closed as soon as it is accepted
    idle_timeout: float = 30.0        # seconds a connection may wait between two reads


class OtlpReceiver:
    """Collects spans over OTLP into `history` (and its own list). Use `with OtlpReceiver(h) as r:`."""

    def __init__(self, history=None, *, grpc: bool = True, max_body: int | None = None, actor: str = "otlp",
                 limits: ReceiverLimits | None = None) -> None:
        limits = limits or ReceiverLimits()
        if max_body is not None:
            limits = ReceiverLimits(**{**limits.__dict__, "max_body": max_body})
        self.history, self.limits, self.actor = history, limits, actor
        self.max_body = limits.max_body
        self.want_grpc = grpc
        self.requests = 0  # accepted export requests (HTTP and gRPC)
        self.rejected = 0  # refused HTTP bodies (400/411/413/415)
        self.received_spans = 0  # spans decoded from accepted requests (kept or not)
        self.dropped_spans = 0  # of those, over the run's limits
        self.dropped_requests = 0  # requests not even decoded: the span limit was already reached
        self.received_bytes = 0  # request bodies as sent, refused ones included
        self.refused_connections = 0  # over max_connections
        self.capped: set[str] = set()  # which limits were hit (each noted once in the history)
        self._spans: list[Span] = []
        self._kept_bytes = 0
        self._lock = threading.Lock()
        self._http: _HttpServer | None = None
        self._grpc = None
        self.grpc_port: int | None = None

    # lifecycle
    def start(self) -> "OtlpReceiver":
        self._http = _HttpServer(self).start()
        if self.want_grpc:
            self._start_grpc()
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.stop()
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
        return self._http.port

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

    def full(self) -> bool:
        """The run's span limit is reached: further requests are answered but not decoded."""
        return len(self._spans) >= self.limits.max_spans

    # what the servers call
    def accept(self, request: ExportTraceServiceRequest) -> int:
        """Keep the request's spans while the run's limits allow; count the rest. Returns spans kept."""
        kept: list[Span] = []
        received = 0
        over = ""
        for resource_spans in request.resource_spans:
            service = service_of(resource_spans)
            for scope_spans in resource_spans.scope_spans:
                received += len(scope_spans.spans)
                if over:
                    continue  # counted, not decoded
                for pb in scope_spans.spans:
                    size = pb.ByteSize()
                    with self._lock:
                        if len(self._spans) + len(kept) >= self.limits.max_spans:
                            over = "spans"
                        elif self._kept_bytes + size > self.limits.max_span_bytes:
                            over = "span_bytes"
                        else:
                            self._kept_bytes += size
                    if over:
                        break
                    kept.append(decode_span(pb, service))
        with self._lock:
            self._spans += kept
            self.requests += 1
            self.received_spans += received
            self.dropped_spans += received - len(kept)
        if self.history is not None:
            for span in kept:
                self.history.record(SPAN_EVENT, self.actor, **span.record())
        if over:
            self._cap(over)
        return len(kept)

    def drop_request(self) -> None:
        """A request that arrived after the span limit was reached: answered, counted, not decoded."""
        with self._lock:
            self.dropped_requests += 1
        self._cap("spans")

    def count_bytes(self, size: int) -> None:
        with self._lock:
            self.received_bytes += size

    def refuse_connection(self) -> None:
        with self._lock:
            self.refused_connections += 1
        self._cap("connections")

    def refuse(self, status: int, reason: str) -> None:
        with self._lock:
            self.rejected += 1
            rejected = self.rejected
        if self.history is None:
            return
        if rejected <= MAX_REFUSAL_NOTES:
            self.history.record("note", self.actor, message=f"OTLP body refused with HTTP {status}: "
                                                            f"{reason[:MAX_REASON]}")
        elif rejected == MAX_REFUSAL_NOTES + 1:
            self.history.record("note", self.actor, message=f"more than {MAX_REFUSAL_NOTES} OTLP bodies were "
                                                            "refused; the rest are counted, not noted")

    def _cap(self, which: str) -> None:
        """Note in the history, once per limit, that the submission went over it."""
        with self._lock:
            if which in self.capped:
                return
            self.capped.add(which)
        limit, what = {"spans": (self.limits.max_spans, "spans"),
                       "span_bytes": (self.limits.max_span_bytes, "bytes of spans"),
                       "connections": (self.limits.max_connections, "connections open at once")}[which]
        if self.history is not None:
            self.history.record("note", self.actor, otlp_capped=which, limit=limit,
                                message=f"the services sent more than {limit} {what} to the grader's OTLP "
                                        f"receiver; the rest was dropped")


def capped_limits(history) -> list[str]:
    """The receiver's notes of limits the services went over (for a trace check's message)."""
    return [e.data["message"] for e in history.events("note") if e.data.get("otlp_capped")]


class _HttpServer:
    """OTLP/HTTP on one thread: an asyncio loop, h11 for the protocol, at most max_connections open."""

    def __init__(self, receiver: OtlpReceiver) -> None:
        self.receiver = receiver
        self.limits = receiver.limits
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self.open = 0
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self.loop.run_forever, name="otlp-http", daemon=True)

    def start(self) -> "_HttpServer":
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._connection, "127.0.0.1", 0, backlog=128), self.loop).result(30)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def close() -> None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await self._server.wait_closed()
        try:
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            if not self.loop.is_running():
                self.loop.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.open >= self.limits.max_connections:
            self.receiver.refuse_connection()
            writer.transport.abort()
            return
        self.open += 1
        self._writers.add(writer)
        try:
            await self._serve(h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024), reader, writer)
        except (ConnectionError, asyncio.TimeoutError, h11.ProtocolError, OSError):
            pass  # a client that breaks the protocol or goes quiet loses its connection, nothing else
        finally:
            self.open -= 1
            self._writers.discard(writer)
            writer.transport.abort()

    async def _next(self, conn: h11.Connection, reader: asyncio.StreamReader):
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await asyncio.wait_for(reader.read(65536), self.limits.idle_timeout)
            conn.receive_data(data)  # b"": the client closed

    async def _serve(self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            event = await self._next(conn, reader)
            if not isinstance(event, h11.Request):
                return  # closed (or a protocol h11 refused)
            status, content_type, body = await self._answer_request(conn, reader, event)
            keep = conn.their_state is h11.DONE
            headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
            if not keep:
                headers.append(("Connection", "close"))
            writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
            writer.write(conn.send(h11.Data(data=body)))
            writer.write(conn.send(h11.EndOfMessage()))
            await asyncio.wait_for(writer.drain(), self.limits.idle_timeout)
            if not keep or conn.our_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _answer_request(self, conn: h11.Connection, reader: asyncio.StreamReader,
                              request: h11.Request) -> tuple[int, str, bytes]:
        receiver = self.receiver
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
        path = request.target.decode("latin-1").split("?")[0]
        if request.method != b"POST" or path not in (TRACES_PATH, *OTHER_SIGNALS):
            return self._refuse(404, f"only POST {TRACES_PATH} is served here")
        length = headers.get("content-length")
        if length is None or not length.isdigit():
            return self._refuse(411, "a Content-Length is required")
        if int(length) > receiver.max_body:
            return self._refuse(413, f"the body is {length} bytes, over the {receiver.max_body}-byte limit")
        body = bytearray()
        while True:
            event = await self._next(conn, reader)
            if isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise ConnectionError("the client went away mid-request")
        receiver.count_bytes(len(body))
        content_type = headers.get("content-type", "")
        as_json = content_type.split(";")[0].strip().lower() == JSON
        if path in OTHER_SIGNALS:  # accepted and dropped: the checks judge traces only
            return (200, JSON, b"{}") if as_json else (200, PROTOBUF, b"")
        if receiver.full():
            receiver.drop_request()
        else:
            try:
                parsed = parse_body(bytes(body), content_type, headers.get("content-encoding", ""), receiver.max_body)
            except BodyError as e:
                return self._refuse(e.status, e.reason)
            receiver.accept(parsed)
        if as_json:
            return 200, JSON, json_format.MessageToJson(ExportTraceServiceResponse()).encode()
        return 200, PROTOBUF, ExportTraceServiceResponse().SerializeToString()

    def _refuse(self, status: int, reason: str) -> tuple[int, str, bytes]:
        self.receiver.refuse(status, reason)
        return status, "text/plain; charset=utf-8", reason.encode()
