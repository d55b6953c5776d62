"""A trace as a waterfall in the terminal: a rich Tree, and the same as plain text for evidence.

Children are indented under their parent; a span that *links* to another (a consumer that started
its own trace) is shown under the span it links to, marked `↪ link`, so an operation reads as one
tree even across traces. Each line: offset from the trace's start, duration, a bar placing the span
on the trace's timeline, service, kind, name, ERROR (red) with its message, and the faults that
overlapped the span (`⚡ label`). Faults are `(start, end, label)` in unix nanoseconds, the clock
spans use.
"""
from __future__ import annotations

import io
from typing import Iterable, Sequence

from rich.console import Console
from rich.text import Text
from rich.tree import Tree

from ..otlp.spans import Span
from ..traces.model import SpanIndex, key
from .safe_text import printable

Fault = tuple[int, int, str]  # (start unix ns, end unix ns, label)
# Span fields are the submission's: each goes through safe_text.printable (rich Text is never markup,
# but it passes escape sequences through to the terminal).
KIND_STYLE = {"SERVER": "cyan", "CLIENT": "blue", "PRODUCER": "magenta", "CONSUMER": "green", "INTERNAL": "dim"}


def fmt_ns(ns: float) -> str:
    if ns < 1_000_000:
        return f"{ns / 1000:.0f}µs"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.1f}ms"
    return f"{ns / 1e9:.2f}s"


def faults_in_span_clock(faults: Iterable[dict], wall_t0_ns: int, now: float | None = None) -> list[Fault]:
    """Fault summaries (grader.nemesis.fault_events: `start`/`end` in seconds since the history
    started) as (start, end, label) in unix ns, given the wall clock at the history's start. A fault
    never healed ends at `now` (seconds, default: its start); one never injected is left out."""
    out = []
    for f in faults:
        if f.get("start") is None:
            continue
        end = f.get("end") if f.get("end") is not None else (now if now is not None else f["start"])
        label = f.get("description") or " ".join(str(x) for x in (f.get("fault"), f.get("target")) if x)
        out.append((wall_t0_ns + int(f["start"] * 1e9), wall_t0_ns + int(end * 1e9), label))
    return out


def overlapping(faults: Iterable[Fault], start: int, end: int) -> list[Fault]:
    return [f for f in faults if f[0] <= end and f[1] >= start]


class _Waterfall:
    def __init__(self, index: SpanIndex, trace_id: str, faults: Sequence[Fault], linked: bool,
                 max_spans: int | None, bar_width: int) -> None:
        self.index, self.trace_id, self.faults = index, trace_id, list(faults)
        self.traces = index.related_traces(trace_id) if linked else [trace_id]
        self.linked, self.max_spans, self.bar_width = linked, max_spans, bar_width
        spans = [s for t in self.traces for s in index.trace(t)]
        self.count = len(spans)
        self.t0 = min((s.start for s in spans), default=0)
        self.t1 = max((s.end for s in spans), default=0)
        self.shown: set = set()

    def tree(self) -> Tree:
        services = sorted({s.service for t in self.traces for s in self.index.trace(t)})
        head = Text.assemble(("trace ", "bold"), (printable(self.trace_id), "bold"),
                             f" · {self.count} span{'s' * (self.count != 1)}", no_wrap=True, overflow="ellipsis")
        if self.count:
            head.append(f" · {fmt_ns(self.t1 - self.t0)} · {printable(', '.join(services))}")
        if len(self.traces) > 1:
            head.append(f" · {len(self.traces) - 1} linked trace{'s' * (len(self.traces) > 2)}")
        tree = Tree(head)
        for start, end, label in overlapping(self.faults, self.t0, self.t1):
            tree.add(Text(f"⚡ {printable(label)} {self._offset(start)} … {self._offset(end)}", style="yellow"))
        if not self.count:
            tree.add(Text("no spans received for this trace", style="red"))
            return tree
        for root in self.index.roots(self.trace_id):
            self._add(tree, root, "")
        for other in self.traces[1:]:  # linked traces whose linking spans sit under a non-root span
            for root in self.index.roots(other):
                if key(root) not in self.shown:
                    self._add(tree, root, f"(trace {printable(other[:8])}) ")
        hidden = self.count - len(self.shown)
        if hidden > 0:
            tree.add(Text(f"… {hidden} more span{'s' * (hidden != 1)}", style="dim"))
        return tree

    def _add(self, parent: Tree, span: Span, prefix: str) -> None:
        if key(span) in self.shown or (self.max_spans is not None and len(self.shown) >= self.max_spans):
            return
        self.shown.add(key(span))
        node = parent.add(self._label(span, prefix))
        for child in self.index.children(span):
            self._add(node, child, "")
        if self.linked:
            for linker in self.index.linked_from(span):
                if linker.trace_id in self.traces:
                    self._add(node, linker, "↪ link " + (f"(trace {printable(linker.trace_id[:8])}) "
                                                          if linker.trace_id != span.trace_id else ""))

    def _offset(self, t: int) -> str:
        return ("+" if t >= self.t0 else "-") + fmt_ns(abs(t - self.t0))

    def _bar(self, span: Span) -> str:
        width, total = self.bar_width, max(1, self.t1 - self.t0)
        a = min(width - 1, int((span.start - self.t0) * width / total))
        b = max(a + 1, min(width, round((span.end - self.t0) * width / total)))
        return "▕" + " " * a + "█" * (b - a) + " " * (width - b) + "▏"

    def _label(self, span: Span, prefix: str) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(f"{self._offset(span.start):>9} {fmt_ns(span.duration_ns):>8} ", style="dim")
        if self.bar_width:
            text.append(self._bar(span) + " ", style="red" if span.is_error else "dim")
        text.append(prefix, style="italic")
        text.append(printable(span.service), style="bold")
        text.append(f" {printable(span.kind)} ", style=KIND_STYLE.get(span.kind, ""))
        text.append(printable(span.name))
        text.append(f" [{printable(span.span_id[:8])}]", style="dim")
        if span.parent_span_id and self.index.parent(span) is None:
            text.append(f" (remote parent {printable(span.parent_span_id[:8])})", style="dim")
        if span.is_error:
            message = printable(span.status.get("message") or "")
            text.append(" ERROR" + (f": {message}" if message else ""), style="bold red")
        for _, _, label in overlapping(self.faults, span.start, span.end):
            text.append(f" ⚡ {printable(label)}", style="yellow")
        return text


def _index(spans: Iterable[Span] | SpanIndex) -> SpanIndex:
    return spans if isinstance(spans, SpanIndex) else SpanIndex(spans)


def render_trace(spans: Iterable[Span] | SpanIndex, trace_id: str, faults: Sequence[Fault] = (), *,
                 linked: bool = True, max_spans: int | None = None, bar_width: int = 20) -> Tree:
    """The trace (and, if `linked`, the traces linking into it) as a rich Tree."""
    return _Waterfall(_index(spans), trace_id, faults, linked, max_spans, bar_width).tree()


def trace_text(spans: Iterable[Span] | SpanIndex, trace_id: str, faults: Sequence[Fault] = (), *,
               linked: bool = True, max_spans: int | None = 30, bar_width: int = 0, width: int = 160) -> str:
    """The same waterfall as plain text (no colours), e.g. for a check's evidence."""
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False, no_color=True,
                      highlight=False)
    console.print(render_trace(spans, trace_id, faults, linked=linked, max_spans=max_spans, bar_width=bar_width))
    return "\n".join(line.rstrip() for line in console.file.getvalue().rstrip().splitlines())
