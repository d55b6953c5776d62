"""Assertions over one operation's spans, and the completeness rule for waiting on them.

    op = OperationSpans(index, trace_id, label="order o-17")
    op.count(Sel(service="order_api", kind="SERVER"), exactly=1)
    op.joined(Sel(kind="PRODUCER"), Step(service="read_model", kind="CONSUMER"))
    op.attrs(Sel(kind="SERVER"), present=["http.request.method"], equal={"http.route": "/orders"})
    op.status(Sel(kind="SERVER"), "ERROR"); op.duration(Sel(kind="CONSUMER"), max_ms=2000)
    if not op.ok: evidence += op.evidence(faults)

An operation's spans are those of its trace plus the traces linking into it (SpanIndex.related).

Completeness: spans arrive in batches, late, from several processes, so "the span count stopped
changing" proves nothing. `wait_for_traces` instead waits, bounded, until each operation's expected
selectors all match a received span, and returns what is still missing when the time is up.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..otlp.spans import Span
from .model import SpanIndex
from .select import Sel, Step

Fault = tuple[int, int, str]


class OperationSpans:
    """Assertions on one operation; each failed one adds a problem line, none raise."""

    def __init__(self, index: SpanIndex, trace_id: str, label: str = "") -> None:
        self.index, self.trace_id, self.label = index, trace_id, label or f"trace {trace_id}"
        self.spans = index.related(trace_id)
        self.problems: list[str] = []

    @property
    def ok(self) -> bool:
        return not self.problems

    def select(self, sel: Sel, own_trace: bool = False) -> list[Span]:
        return sel(s for s in self.spans if not own_trace or s.trace_id == self.trace_id)

    def fail(self, message: str) -> "OperationSpans":
        self.problems.append(message)
        return self

    def count(self, sel: Sel, exactly: int | None = None, at_least: int | None = None,
              at_most: int | None = None) -> "OperationSpans":
        n = len(self.select(sel))
        if exactly is not None and n != exactly:
            self.fail(f"{n} {sel}, expected {exactly}")
        if at_least is not None and n < at_least:
            self.fail(f"{n} {sel}, expected at least {at_least}")
        if at_most is not None and n > at_most:
            self.fail(f"{n} {sel}, expected at most {at_most}")
        return self

    def has(self, sel: Sel) -> "OperationSpans":
        return self.count(sel, at_least=1)

    def joined(self, upstream: Sel | Sequence[Span], downstream: Step | Sel, via_link: bool | None = None,
               upstream_name: str = "") -> list[Span]:
        """The `downstream` spans that descend from an `upstream` span (a selector, or spans already
        found), by parent, and also by link when allowed (default: the Step's rule). None found is
        a problem, worded by what was there instead."""
        ups = self.select(upstream) if isinstance(upstream, Sel) else list(upstream)
        up_name = upstream_name or (str(upstream) if isinstance(upstream, Sel) else "the previous step")
        downs = self.select(downstream)
        link_ok = via_link if via_link is not None else (downstream.joins_by_link if isinstance(downstream, Step)
                                                         else False)
        joined = [d for d in downs if self.index.joins(d, ups, link_ok)]
        if joined:
            return joined
        how = "parent or link" if link_ok else "parent"
        if not ups:
            self.fail(f"no {up_name} (so nothing for {downstream} to join)")
        elif not downs:
            self.fail(f"no {downstream} joined to {up_name} by {how}")
        else:
            first = downs[0]
            links = f", links to {','.join(link['span_id'][:8] for link in first.links)}" if first.links else ""
            self.fail(f"{len(downs)} {downstream} but none descends from {up_name} by {how} "
                      f"(e.g. {first.short()}: parent {first.parent_span_id[:8] or 'none'}{links})")
        return []

    def attrs(self, sel: Sel, present: Iterable[str | tuple[str, ...]] = (),
              equal: Mapping[str, Any] | None = None) -> "OperationSpans":
        """Every selected span has each `present` attribute (a tuple: any one of those names) and
        the `equal` values."""
        for span in self.select(sel):
            for names in present:
                names = (names,) if isinstance(names, str) else tuple(names)
                if not any(n in span.attributes for n in names):
                    self.fail(f"{span.short()} has no {' or '.join(names)}")
            for name, value in (equal or {}).items():
                if span.attr(name) != value:
                    self.fail(f"{span.short()}: {name}={span.attr(name)!r}, expected {value!r}")
        return self

    def status(self, sel: Sel, code: str, any_span: bool = True) -> "OperationSpans":
        """Status `code` on one selected span (any_span) or on all of them."""
        spans = self.select(sel)
        matching = [s for s in spans if s.status.get("code") == code]
        if not spans:
            self.fail(f"no {sel} to carry status {code}")
        elif (not matching) if any_span else len(matching) != len(spans):
            bad = next(s for s in spans if s.status.get("code") != code)
            self.fail(f"{bad.short()} has status {bad.status.get('code')}, expected {code}")
        return self

    def duration(self, sel: Sel, max_ms: float | None = None, min_ms: float | None = None) -> "OperationSpans":
        for span in self.select(sel):
            ms = span.duration_ns / 1e6
            if max_ms is not None and ms > max_ms:
                self.fail(f"{span.short()} took {ms:.1f} ms, more than {max_ms:g} ms")
            if min_ms is not None and ms < min_ms:
                self.fail(f"{span.short()} took {ms:.1f} ms, less than {min_ms:g} ms")
        return self

    def evidence(self, faults: Sequence[Fault] = (), excerpt: bool = True, max_spans: int = 12) -> str:
        """One evidence item: the operation, its trace id, the problems, and (excerpt) the waterfall."""
        line = f"{self.label} (trace {self.trace_id}): {'; '.join(self.problems) or 'ok'}"
        if not excerpt:
            return line
        return line + "\n" + indent(excerpt_text(self.index, self.trace_id, faults, max_spans))


def excerpt_text(index: SpanIndex, trace_id: str, faults: Sequence[Fault] = (), max_spans: int = 12) -> str:
    from ..report.waterfall import trace_text  # here: the report package imports this one's model

    return trace_text(index, trace_id, faults, max_spans=max_spans)


def indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


@dataclass(frozen=True)
class Expectation:
    """What must arrive for one operation before it is judged: one span per selector."""

    trace_id: str
    expected: tuple[Sel, ...]
    label: str = ""

    def missing(self, index: SpanIndex) -> list[Sel]:
        spans = index.related(self.trace_id)
        return [sel for sel in self.expected if not any(sel.matches(s) for s in spans)]


@dataclass
class Completeness:
    complete: bool
    waited: float  # seconds
    missing: dict[str, list[Sel]] = field(default_factory=dict)  # label (or trace id) -> selectors not matched

    def summary(self) -> str:
        if self.complete:
            return f"every expected span arrived within {self.waited:.1f}s"
        return f"{len(self.missing)} operation(s) still missing spans after {self.waited:.1f}s"


SpanSource = Callable[[], Iterable[Span]]


def wait_for_traces(receiver: Any, expectations: Iterable[Expectation] | Mapping[str, Sequence[Sel]],
                    timeout: float, interval: float = 0.1) -> Completeness:
    """Wait (at most `timeout` s) until every expectation's selectors match a received span of its
    operation. `receiver` is an OtlpReceiver (anything with .spans()) or a callable returning spans;
    `expectations` are Expectation objects or {trace_id: [selectors]}. Never raises on timeout: the
    checks judge what arrived, and the result says what did not."""
    if isinstance(expectations, Mapping):
        expectations = [Expectation(t, tuple(sels)) for t, sels in expectations.items()]
    pending = list(expectations)
    source: SpanSource = receiver.spans if hasattr(receiver, "spans") else receiver
    start = time.monotonic()
    while True:
        index = SpanIndex(source())
        pending = [e for e in pending if e.missing(index)]
        waited = time.monotonic() - start
        if not pending:
            return Completeness(True, waited)
        if waited >= timeout:
            return Completeness(False, waited, {e.label or e.trace_id: e.missing(index) for e in pending})
        time.sleep(min(interval, max(0.0, timeout - waited)))
