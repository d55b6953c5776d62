"""Trace checkers: pure functions of the received spans and what the grader knows, for any lab.

What the grader knows is given per operation: its label (for evidence) and the trace id of the
`traceparent` the grader sent (`Operation`). A lab names its span chain as `Step`s, e.g. lab 1:
`[Step(service="order_api", kind="SERVER"), Step(kind="PRODUCER"), Step(service="read_model",
kind="CONSUMER")]`.

Semantic conventions followed: OpenTelemetry semantic conventions v1.37.0 - HTTP (stable):
`http.request.method`, `http.response.status_code`, `url.path` or `http.route` on SERVER spans;
messaging (development status): `messaging.system`, `messaging.destination.name`,
`messaging.operation.type`, with span kinds create/send -> PRODUCER (send may be CLIENT when
create spans exist), receive -> CLIENT, process -> CONSUMER, settle -> CLIENT; database:
`db.system.name` on CLIENT spans. Accepted as a documented alternative: the pre-1.26 messaging
names the contrib instrumentations (confluent-kafka, pika) still emit by default -
`messaging.destination` and `messaging.operation` (values publish/receive/process, receive
then being CONSUMER; a PRODUCER span may omit the operation, as those versions required) - and
the pre-1.30 `db.system`.

Joining a consumer to its producer: by parent OR by span link. The messaging conventions make the
link the general mechanism (a span that receives or processes a batch has many producers and can
have one parent at most) and parentage an option for single-record processing; both say "this
processing continues that send", so either earns the point.

Evidence names the operation and its trace id, and shows an excerpt of the trace as a waterfall.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

from ..checks import CheckResult
from ..otlp.spans import Span
from .assertions import Fault, OperationSpans, excerpt_text, indent
from .context import parse_traceparent
from .model import SpanIndex
from .select import Sel, Step

EXCERPTS = 3  # waterfall excerpts per check: the first failures explain the rest
SEMCONV_VERSION = "1.37.0"


@dataclass(frozen=True)
class Operation:
    """One operation the grader performed (a request, an injected record) and traced."""

    label: str  # e.g. "order o-17 (POST /orders, key k-3)"
    trace_id: str  # from the traceparent the grader sent
    parent_span_id: str = ""  # that traceparent's span id: when given, the first step must be its child


@dataclass(frozen=True)
class RecordHeader:
    """A record the grader read from a topic: its traceparent header and the operation it belongs to."""

    label: str  # e.g. "orders[1]@17 (order o-17)"
    traceparent: str | bytes | None
    trace_id: str = ""  # the operation's trace id, when the grader knows it


def _index(spans: Iterable[Span] | SpanIndex) -> SpanIndex:
    return spans if isinstance(spans, SpanIndex) else SpanIndex(spans)


def _evidence(failed: Sequence[OperationSpans], faults: Sequence[Fault]) -> list[str]:
    return [op.evidence(faults, excerpt=i < EXCERPTS) for i, op in enumerate(failed)]


def _failing(index: SpanIndex, items: Sequence[Any],
             judge: Callable[[OperationSpans, Any], OperationSpans]) -> list[OperationSpans]:
    """Run `judge` on each item's operation (items have .label and .trace_id); the failed ones."""
    checks = [judge(OperationSpans(index, item.trace_id, item.label), item) for item in items]
    return [check for check in checks if not check.ok]


def _none_to_judge(id: str, title: str, max_points: float, what: str) -> CheckResult:
    return CheckResult.skip(id, title, max_points, f"no {what} to judge in this run")


def check_connected_traces(spans: Iterable[Span] | SpanIndex, operations: Sequence[Operation],
                           chain: Sequence[Step], *, faults: Sequence[Fault] = (), id: str = "traces",
                           title: str = "One connected trace per operation", max_points: float = 1,
                           hint: str | None = None) -> CheckResult:
    """Each operation has one connected trace made of `chain`: the first step in the operation's own
    trace (a child of the grader's span when `parent_span_id` is known: the service continued the
    incoming traceparent), each later step descending from a span of the step before, by parentage
    (or by link, for steps that allow it)."""
    if not operations:
        return _none_to_judge(id, title, max_points, "traced operations")
    index = _index(spans)

    def connected(check: OperationSpans, op: Operation) -> OperationSpans:
        previous = _first_step(check, chain[0], op)
        for upstream, step in zip(chain, chain[1:]):
            if not previous:
                break
            previous = check.joined(previous, step, upstream_name=str(upstream))
        return check

    failed = _failing(index, operations, connected)
    evidence = _evidence(failed, faults) + _orphans(index, chain, operations)
    shape = " → ".join(str(step) for step in chain)
    return CheckResult.verdict(
        id, title, max_points, not failed,
        f"{len(operations) - len(failed)} of {len(operations)} operations have one connected trace ({shape})",
        evidence, hint or "Continue the incoming traceparent in the SERVER span, send the record inside the PRODUCER "
                          "span with the context injected into its headers, and start the CONSUMER span from the "
                          "record's extracted context (as parent, or as a span link).")


def _first_step(check: OperationSpans, step: Step, op: Operation) -> list[Span]:
    """The first step continues the grader's context: as a child in its trace or, for a step that may
    join by link (a consumer of a record the grader produced), as a span linking to it."""
    mine = check.select(step, own_trace=True)
    if op.parent_span_id:
        mine = [s for s in mine if s.parent_span_id == op.parent_span_id]
    if not mine and step.joins_by_link:
        mine = [s for s in check.select(step) if any(
            link.get("trace_id") == op.trace_id and (not op.parent_span_id or link.get("span_id") == op.parent_span_id)
            for link in s.links)]
    if not mine:
        elsewhere = "" if not check.select(step) else " (only in a linked trace)"
        check.fail(f"no {step} in the request's trace{elsewhere}: the service must continue the incoming "
                   f"traceparent" + (f" (its span {op.parent_span_id[:8]} as parent)" if op.parent_span_id else ""))
    return mine


def _orphans(index: SpanIndex, chain: Sequence[Step], operations: Sequence[Operation]) -> list[str]:
    """Spans of a later step that start a trace of their own with no link: the usual cause of a broken
    chain (the consumer did not extract the record's context), worth one line of its own."""
    traces = {t for op in operations for t in index.related_traces(op.trace_id)}
    lines = []
    for step in chain[1:]:
        orphans = [s for s in index.spans.values()
                   if step.matches(s) and s.trace_id not in traces and not s.parent_span_id and not s.links]
        if orphans:
            lines.append(f"{len(orphans)} {step} start a new trace with neither a parent nor a link "
                         f"(e.g. {orphans[0].short()} in trace {orphans[0].trace_id})")
    return lines


def check_trace_headers(spans: Iterable[Span] | SpanIndex, records: Sequence[RecordHeader], *,
                        producer: Sel = Sel(kind="PRODUCER"), faults: Sequence[Fault] = (), id: str = "traces",
                        title: str = "Records carry their producer span's context", max_points: float = 1,
                        hint: str | None = None) -> CheckResult:
    """Each record's `traceparent` header names a received span matching `producer`, in the
    operation's trace. The PRODUCER span itself, not its SERVER parent: the context a message
    carries is its creation context (the messaging conventions), so the consumer's parent or link
    points at the span that sent it; a header naming the SERVER span leaves the PRODUCER span a
    dead end and the trace shows the consume happening beside the send instead of after it."""
    if not records:
        return _none_to_judge(id, title, max_points, "records")
    index = _index(spans)
    problems: list[tuple[str, str]] = []  # (trace id or "", line)
    for record in records:
        problem = _header_problem(index, record, producer)
        if problem:
            problems.append((parse_traceparent(record.traceparent).trace_id
                             if parse_traceparent(record.traceparent) else record.trace_id, problem))
    evidence = []
    for i, (trace_id, line) in enumerate(problems):
        excerpt = i < EXCERPTS and trace_id and index.trace(trace_id)
        evidence.append(line + ("\n" + indent(excerpt_text(index, trace_id, faults)) if excerpt else ""))
    return CheckResult.verdict(
        id, title, max_points, not problems,
        f"{len(records) - len(problems)} of {len(records)} records carry a traceparent naming their {producer}",
        evidence, hint or "Inject the trace context into the record's headers while the PRODUCER span is current "
                          "(inside the send span), so the header names that span.")


def _header_problem(index: SpanIndex, record: RecordHeader, producer: Sel) -> str | None:
    if record.traceparent is None:
        return f"{record.label}: no traceparent header"
    context = parse_traceparent(record.traceparent)
    if context is None:
        return f"{record.label}: malformed traceparent {record.traceparent!r}"
    if record.trace_id and context.trace_id != record.trace_id:
        return (f"{record.label}: traceparent is in trace {context.trace_id}, not the request's trace "
                f"{record.trace_id}")
    span = index.get(context.trace_id, context.span_id)
    if span is None:
        return f"{record.label}: traceparent names span {context.span_id} of trace {context.trace_id}, never received"
    if not producer.matches(span):
        return f"{record.label}: traceparent names {span.short()}, not a {producer}"
    return None


# --- semantic conventions -------------------------------------------------------------------

MESSAGING_KINDS = {  # operation type (new and pre-1.26 values) -> allowed span kinds
    "create": {"PRODUCER"}, "send": {"PRODUCER", "CLIENT"}, "publish": {"PRODUCER"},
    "receive": {"CLIENT", "CONSUMER"}, "process": {"CONSUMER"}, "deliver": {"CONSUMER"}, "settle": {"CLIENT"}}
DESTINATION = ("messaging.destination.name", "messaging.destination")  # current, pre-1.26
OPERATION = ("messaging.operation.type", "messaging.operation")
DB_SYSTEM = ("db.system.name", "db.system")


def semconv_problems(span: Span) -> Iterator[str]:
    """What `span` gets wrong against the conventions named in this module's docstring."""
    attrs = span.attributes
    messaging = span.kind in ("PRODUCER", "CONSUMER") or "messaging.system" in attrs
    if messaging:
        if "messaging.system" not in attrs:
            yield "no messaging.system"
        if not any(a in attrs for a in DESTINATION):
            yield "no messaging.destination.name (or messaging.destination)"
        operation = next((str(attrs[a]) for a in OPERATION if a in attrs), None)
        if operation is None:
            if span.kind != "PRODUCER":  # pre-1.26: a send span omitted the operation
                yield "no messaging.operation.type (or messaging.operation)"
        elif operation in MESSAGING_KINDS and span.kind not in MESSAGING_KINDS[operation]:
            yield f"kind {span.kind} for messaging operation {operation!r} (expected {'/'.join(sorted(MESSAGING_KINDS[operation]))})"
    elif span.kind == "SERVER" and "rpc.system" not in attrs:  # an HTTP server span
        for names in (("http.request.method",), ("http.response.status_code",), ("url.path", "http.route")):
            if not any(n in attrs for n in names):
                yield f"no {' or '.join(names)}"
    if any(a.startswith("db.") for a in attrs):
        if not any(a in attrs for a in DB_SYSTEM):
            yield "no db.system.name (or db.system)"
        if span.kind != "CLIENT":
            yield f"kind {span.kind} for a database call (expected CLIENT)"
    if span.kind == "CLIENT" and "http.request.method" in attrs and "messaging.system" not in attrs:
        if "http.response.status_code" not in attrs and not span.is_error:
            yield "no http.response.status_code"


def check_semantic_conventions(spans: Iterable[Span] | SpanIndex, *, services: Sequence[str] | None = None,
                               required: Sequence[Sel] = (), id: str = "traces",
                               title: str = "Span kinds and attributes follow the semantic conventions",
                               max_points: float = 1, hint: str | None = None) -> CheckResult:
    """Every span (of `services`, if given) follows the conventions; and each `required` selector
    (e.g. Sel(service="order_api", kind="SERVER")) matches at least one span, so a service whose
    spans carry the wrong kind cannot pass by emitting nothing checkable. Evidence is grouped by
    (service, kind, name, problem) with a count and one trace id."""
    index = _index(spans)
    judged = [s for s in index.spans.values() if services is None or s.service in services]
    if not judged:
        return CheckResult.verdict(id, title, max_points, False, "no spans received to judge", [],
                                   hint or "Export spans over OTLP to OTEL_EXPORTER_OTLP_ENDPOINT.")
    groups: dict[tuple[str, str, str, str], list[Span]] = defaultdict(list)
    for span in judged:
        for problem in semconv_problems(span):
            groups[(span.service, span.kind, span.name, problem)].append(span)
    evidence = [f"{service} {kind} {name!r}: {problem} ({len(found)} span{'s' * (len(found) > 1)}, "
                f"e.g. trace {found[0].trace_id})" for (service, kind, name, problem), found in sorted(groups.items())]
    kinds = Counter((s.service, s.kind) for s in judged)
    for sel in required:
        if not sel(judged):
            evidence.append(f"no {sel} at all (spans received: "
                            f"{', '.join(f'{n} {svc} {k}' for (svc, k), n in sorted(kinds.items()))})")
    wrong = {(s.trace_id, s.span_id) for found in groups.values() for s in found}
    return CheckResult.verdict(
        id, title, max_points, not evidence,
        f"{len(judged) - len(wrong)} of {len(judged)} spans follow the semantic conventions v{SEMCONV_VERSION}",
        evidence, hint or "SERVER for the HTTP handler, PRODUCER for the send, CONSUMER for processing a record; "
                          "set the HTTP (http.request.method, http.response.status_code, http.route) and messaging "
                          "(messaging.system, messaging.destination.name, messaging.operation.type) attributes.")


# --- redelivery, errors, secrets, shutdown --------------------------------------------------

@dataclass(frozen=True)
class Redelivery:
    """An operation whose record the grader knows was processed `deliveries` times (e.g. a crash
    after the effect, before the offset commit)."""

    label: str
    trace_id: str
    deliveries: int = 2


def check_redelivery(spans: Iterable[Span] | SpanIndex, redeliveries: Sequence[Redelivery], *,
                     consumer: Sel = Sel(kind="CONSUMER"), faults: Sequence[Fault] = (), id: str = "traces",
                     title: str = "A redelivered record shows as another processing span",
                     max_points: float = 1, hint: str | None = None) -> CheckResult:
    """Each redelivered record has one `consumer` span per delivery in its operation's trace (or in
    a trace linked to it): a retry is visible, not folded into the first attempt."""
    if not redeliveries:
        return _none_to_judge(id, title, max_points, "redelivered records")
    index = _index(spans)
    failed = _failing(index, redeliveries, lambda check, r: check.count(consumer, at_least=r.deliveries))
    return CheckResult.verdict(
        id, title, max_points, not failed,
        f"{len(redeliveries) - len(failed)} of {len(redeliveries)} redelivered records show every delivery",
        _evidence(failed, faults), hint or "Start a processing span for every delivery of a record, from the "
                                           "record's own headers, also when the record is a duplicate you skip.")


@dataclass(frozen=True)
class ExpectedError:
    """An operation the grader knows failed (a 5xx, a dead-lettered record), and where the span
    saying so belongs."""

    label: str
    trace_id: str
    span: Sel  # e.g. Sel(service="order_api", kind="SERVER") or Sel(service="read_model", kind="CONSUMER")


def check_error_status(spans: Iterable[Span] | SpanIndex, failures: Sequence[ExpectedError], *,
                       faults: Sequence[Fault] = (), id: str = "traces",
                       title: str = "Failed attempts carry an error status", max_points: float = 1,
                       hint: str | None = None) -> CheckResult:
    """For each failure, at least one selected span of its operation has status ERROR (at least one:
    a later attempt in the same trace may succeed)."""
    if not failures:
        return _none_to_judge(id, title, max_points, "failed operations")
    index = _index(spans)
    failed = _failing(index, failures, lambda check, f: check.status(f.span, "ERROR"))
    return CheckResult.verdict(
        id, title, max_points, not failed,
        f"{len(failures) - len(failed)} of {len(failures)} failed operations have a span with status ERROR",
        _evidence(failed, faults), hint or "Set the span status to ERROR (with a short message) when a request "
                                           "answers 5xx or a record is dead-lettered; a 4xx is the client's error.")


def strings_in(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(where, text) for every string inside an attribute value (lists and maps included)."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from strings_in(k, f"{path} (key)")
            yield from strings_in(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from strings_in(v, f"{path}[{i}]")


def span_strings(span: Span) -> Iterator[tuple[str, str]]:
    """Every string a span carries, with where it sits: name, attributes, events, links, status."""
    yield "name", span.name
    yield from strings_in(span.attributes, "attributes")
    for e in span.events:
        yield f"event {e.get('name')!r} name", str(e.get("name", ""))
        yield from strings_in(e.get("attributes") or {}, f"event {e.get('name')!r}")
    for link in span.links:
        yield from strings_in(link.get("attributes") or {}, f"link to {link.get('span_id', '')[:8]}")
    yield "status message", str(span.status.get("message") or "")


def check_no_secret_leaks(spans: Iterable[Span] | SpanIndex, secrets: Sequence[str], *, id: str = "traces",
                          title: str = "No secret in any span", max_points: float = 1,
                          hint: str | None = None) -> CheckResult:
    """No `secret` occurs (as a substring) in any string of any span. No spans at all fails: an
    export that never happened proves nothing."""
    index = _index(spans)
    secrets = [s for s in secrets if s]
    if not index.spans:
        return CheckResult.verdict(id, title, max_points, False, "no spans received to inspect", [],
                                   hint or "Export spans over OTLP to OTEL_EXPORTER_OTLP_ENDPOINT.")
    leaks = []
    for span in index.spans.values():
        for where_, text in span_strings(span):
            for n, secret in enumerate(secrets, 1):
                if secret in text:
                    leaks.append(_mask(f"secret #{n} ({_masked(secret)}) in {span.short()} {where_}, "
                                       f"trace {span.trace_id}", secrets))
    return CheckResult.verdict(
        id, title, max_points, not leaks,
        f"{len(leaks)} secret occurrence(s) in {len(index.spans)} spans" if leaks else
        f"none of {len(secrets)} secret(s) in {len(index.spans)} spans",
        leaks, hint or "Never record credentials in spans: no Authorization or Cookie header, no request body "
                       "fields that hold secrets. Record an allow-list of headers, not all of them.")


def _masked(secret: str) -> str:
    return secret[:3] + "…" if len(secret) > 6 else "…"


def _mask(text: str, secrets: Sequence[str]) -> str:
    """Evidence must not repeat the leak (a span name may hold the secret too)."""
    for secret in secrets:
        text = text.replace(secret, _masked(secret))
    return text


def check_spans_after_shutdown(spans: Iterable[Span] | SpanIndex, operations: Sequence[Operation],
                               expected: Sequence[Sel], *, faults: Sequence[Fault] = (), id: str = "traces",
                               title: str = "Spans survive a clean shutdown", max_points: float = 1,
                               hint: str | None = None) -> CheckResult:
    """`operations` completed before the grader SIGTERMed a service; each still has a span for every
    `expected` selector (that service's spans). For this to test the flush, the service runs with a
    batch delay longer than the time to SIGTERM (OtlpReceiver.env(schedule_delay_ms=60000)), so only
    an export at shutdown can deliver them."""
    if not operations:
        return _none_to_judge(id, title, max_points, "operations completed before the SIGTERM")
    index = _index(spans)

    def arrived(check: OperationSpans, _: Operation) -> OperationSpans:
        for sel in expected:
            check.has(sel)
        return check

    failed = _failing(index, operations, arrived)
    return CheckResult.verdict(
        id, title, max_points, not failed,
        f"{len(operations) - len(failed)} of {len(operations)} operations completed before SIGTERM have their spans",
        _evidence(failed, faults), hint or "On SIGTERM, return from your main loop normally (or call "
                                           "TracerProvider.shutdown()) so the batch processor exports what it holds.")


def combine(id: str, title: str, max_points: float, results: Sequence[CheckResult],
            hint: str | None = None) -> CheckResult:
    """One check made of several trace checkers: passes when none failed (skipped parts are named
    in the message, and all skipped is a skip)."""
    judged = [r for r in results if not r.skipped]
    if not judged:
        return CheckResult.skip(id, title, max_points, "; ".join(r.message for r in results))
    failed = [r for r in judged if not r.passed]
    message = "; ".join(f"{r.title}: {r.message}" for r in (failed or judged))
    skipped = [r.title for r in results if r.skipped]
    if skipped:
        message += f" (not judged: {', '.join(skipped)})"
    evidence = [f"[{r.title}] {e}" for r in failed for e in r.evidence]
    hints = [r.hint for r in failed if r.hint]
    return CheckResult.verdict(id, title, max_points, not failed, message, evidence, hint or " ".join(hints) or None)
