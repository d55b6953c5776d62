"""Spans as the grader keeps them: plain Python values, one history event per span.

`decode_request` turns an OTLP `ExportTraceServiceRequest` (already parsed by opentelemetry-proto)
into `Span`s; `Span.record()` is the history event's data and `Span.from_record` reads it back, so
a saved history.jsonl can be re-judged without servers (`spans_from_history`).

Ids are lowercase hex (the OTLP/JSON and W3C traceparent form); times are unix nanoseconds as the
services' clocks gave them; attribute values are Python scalars, lists and dicts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status as PbStatus

SPAN_EVENT = "span"  # the history event kind
KINDS = ("INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
_KIND_NAMES = {PbSpan.SPAN_KIND_UNSPECIFIED: "INTERNAL",  # the spec: receivers may treat it as INTERNAL
               PbSpan.SPAN_KIND_INTERNAL: "INTERNAL", PbSpan.SPAN_KIND_SERVER: "SERVER",
               PbSpan.SPAN_KIND_CLIENT: "CLIENT", PbSpan.SPAN_KIND_PRODUCER: "PRODUCER",
               PbSpan.SPAN_KIND_CONSUMER: "CONSUMER"}
_STATUS_NAMES = {PbStatus.STATUS_CODE_UNSET: "UNSET", PbStatus.STATUS_CODE_OK: "OK",
                 PbStatus.STATUS_CODE_ERROR: "ERROR"}
UNKNOWN_SERVICE = "unknown_service"  # what the SDKs call a resource without service.name


@dataclass(frozen=True)
class Span:
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root span
    name: str
    kind: str  # one of KINDS
    service: str  # the resource's service.name
    start: int  # unix ns
    end: int  # unix ns
    attributes: dict[str, Any] = field(default_factory=dict)
    events: tuple[dict, ...] = ()  # {"name", "attributes", "t" (unix ns)}
    links: tuple[dict, ...] = ()  # {"trace_id", "span_id", "attributes"}
    status: dict = field(default_factory=lambda: {"code": "UNSET", "message": ""})

    def __hash__(self) -> int:  # the dict fields are not hashable; a span is its ids
        return hash((self.trace_id, self.span_id))

    @property
    def duration_ns(self) -> int:
        return max(0, self.end - self.start)

    @property
    def is_error(self) -> bool:
        return self.status.get("code") == "ERROR"

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attributes.get(key, default)

    def short(self) -> str:
        """How evidence names a span: service, kind, name and a short id."""
        return f"{self.service} {self.kind} {self.name!r} ({self.span_id[:8]})"

    def record(self) -> dict[str, Any]:
        """The history event's data. The span kind is stored as `span_kind`: `kind` is the history
        event's own kind ("span"), a positional parameter of History.record."""
        return {"trace_id": self.trace_id, "span_id": self.span_id, "parent_span_id": self.parent_span_id,
                "links": [dict(link) for link in self.links], "span_kind": self.kind, "name": self.name,
                "service": self.service, "attributes": self.attributes, "events": [dict(e) for e in self.events],
                "status": dict(self.status), "start": self.start, "end": self.end}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> "Span":
        return cls(trace_id=data["trace_id"], span_id=data["span_id"], parent_span_id=data.get("parent_span_id") or "",
                   name=data.get("name", ""), kind=data.get("span_kind") or data.get("kind") or "INTERNAL",
                   service=data.get("service", UNKNOWN_SERVICE), start=int(data.get("start", 0)),
                   end=int(data.get("end", 0)), attributes=dict(data.get("attributes") or {}),
                   events=tuple(data.get("events") or ()), links=tuple(data.get("links") or ()),
                   status=dict(data.get("status") or {"code": "UNSET", "message": ""}))


def spans_from_history(history) -> list[Span]:
    """Every span the receiver recorded in `history` (a live History or one loaded from history.jsonl)."""
    return [Span.from_record(e.data) for e in history.events(SPAN_EVENT)]


def value(v: AnyValue) -> Any:
    """An OTLP AnyValue as a Python value (bytes as text, so a secret hidden in bytes is still found)."""
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return attributes(v.kvlist_value.values)
    if which == "bytes_value":
        return v.bytes_value.decode("utf-8", errors="backslashreplace")
    return getattr(v, which)


def attributes(kvs: Iterable[KeyValue]) -> dict[str, Any]:
    return {kv.key: value(kv.value) for kv in kvs}


def service_of(resource_spans) -> str:
    """The service.name of a ResourceSpans (the SDKs' default when it has none)."""
    for kv in resource_spans.resource.attributes:
        if kv.key == "service.name":
            return str(value(kv.value) or UNKNOWN_SERVICE)
    return UNKNOWN_SERVICE


def decode_request(request: ExportTraceServiceRequest) -> list[Span]:
    spans = []
    for resource_spans in request.resource_spans:
        service = service_of(resource_spans)
        for scope_spans in resource_spans.scope_spans:
            spans += [decode_span(s, service) for s in scope_spans.spans]
    return spans


def decode_span(s: PbSpan, service: str) -> Span:
    return Span(
        trace_id=s.trace_id.hex(), span_id=s.span_id.hex(), parent_span_id=s.parent_span_id.hex(), name=s.name,
        kind=_KIND_NAMES.get(s.kind, "INTERNAL"), service=service, start=s.start_time_unix_nano,
        end=s.end_time_unix_nano, attributes=attributes(s.attributes),
        events=tuple({"name": e.name, "attributes": attributes(e.attributes), "t": e.time_unix_nano} for e in s.events),
        links=tuple({"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex(),
                     "attributes": attributes(link.attributes)} for link in s.links),
        status={"code": _STATUS_NAMES.get(s.status.code, "UNSET"), "message": s.status.message})
