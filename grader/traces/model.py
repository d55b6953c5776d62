"""The spans of a run, indexed by trace, parent and link, so checks can walk a trace both ways.

Spans are keyed by (trace_id, span_id): a parent is looked up in the span's own trace, a link
target in the trace the link names. An exporter that retried a batch may deliver a span twice;
the index keeps the first copy.

An *operation* (one request the grader sent, with its own trace id) owns the spans of its trace
plus those of every trace that links into it: a consumer that starts a new trace and links to the
producer span still belongs to the operation that produced the record (`related`).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Iterator

from ..otlp.spans import Span

Key = tuple[str, str]  # (trace_id, span_id)


def key(span: Span) -> Key:
    return span.trace_id, span.span_id


class SpanIndex:
    def __init__(self, spans: Iterable[Span]) -> None:
        self.spans: dict[Key, Span] = {}
        for span in spans:
            self.spans.setdefault(key(span), span)
        self.by_trace: dict[str, list[Span]] = defaultdict(list)
        self._children: dict[Key, list[Span]] = defaultdict(list)
        self._linked_from: dict[Key, list[Span]] = defaultdict(list)
        self._traces_linking_into: dict[str, set[str]] = defaultdict(set)
        for span in sorted(self.spans.values(), key=lambda s: (s.start, s.end)):
            self.by_trace[span.trace_id].append(span)
            if span.parent_span_id:
                self._children[(span.trace_id, span.parent_span_id)].append(span)
            for link in span.links:
                target = (link.get("trace_id", ""), link.get("span_id", ""))
                self._linked_from[target].append(span)
                if target[0] != span.trace_id:
                    self._traces_linking_into[target[0]].add(span.trace_id)

    def __len__(self) -> int:
        return len(self.spans)

    def get(self, trace_id: str, span_id: str) -> Span | None:
        return self.spans.get((trace_id, span_id))

    def trace(self, trace_id: str) -> list[Span]:
        """The spans of one trace, by start time."""
        return list(self.by_trace.get(trace_id, ()))

    def parent(self, span: Span) -> Span | None:
        return self.spans.get((span.trace_id, span.parent_span_id)) if span.parent_span_id else None

    def children(self, span: Span) -> list[Span]:
        return list(self._children.get(key(span), ()))

    def linked_from(self, span: Span) -> list[Span]:
        """Spans (of any trace) with a link to `span`."""
        return list(self._linked_from.get(key(span), ()))

    def link_targets(self, span: Span) -> list[Span]:
        """The received spans `span` links to."""
        found = (self.spans.get((link.get("trace_id", ""), link.get("span_id", ""))) for link in span.links)
        return [s for s in found if s is not None]

    def related_traces(self, trace_id: str) -> list[str]:
        """`trace_id` and every trace that links into it, directly or through another linking trace."""
        seen, todo = [trace_id], [trace_id]
        while todo:
            for other in sorted(self._traces_linking_into.get(todo.pop(), ())):
                if other not in seen:
                    seen.append(other)
                    todo.append(other)
        return seen

    def related(self, trace_id: str) -> list[Span]:
        """An operation's spans: its trace and the traces linked to it."""
        return [s for t in self.related_traces(trace_id) for s in self.by_trace.get(t, ())]

    def upstream(self, span: Span, via_links: bool) -> Iterator[Span]:
        """Every span `span` descends from: its parent chain, and (via_links) the spans it links to
        and their own upstream. Breadth first; each span once (a malformed trace may have cycles)."""
        seen = {key(span)}
        todo = [span]
        while todo:
            current = todo.pop(0)
            nexts = [self.parent(current)] + (self.link_targets(current) if via_links else [])
            for up in nexts:
                if up is not None and key(up) not in seen:
                    seen.add(key(up))
                    yield up
                    todo.append(up)

    def joins(self, span: Span, upstream: Iterable[Span], via_links: bool) -> bool:
        """True if `span` descends from one of `upstream` (by parentage, or also by link)."""
        wanted = {key(s) for s in upstream}
        return any(key(up) in wanted for up in self.upstream(span, via_links))

    def roots(self, trace_id: str) -> list[Span]:
        """Spans of the trace whose parent was not received (normally one: the root)."""
        return [s for s in self.by_trace.get(trace_id, ()) if self.parent(s) is None]
