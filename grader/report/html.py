"""report.html: one self-contained page per graded run, for a learner or an instructor to read.

Check table, evidence and hints, a timeline of the run (throughput and latency over time from the
history's operations, injected faults as shaded bands or lines, operations a failing check cites
marked), the failing traces' waterfalls (grader/report/waterfall.py, when present), notes and the
logs of crashed services. Plots are matplotlib rendered to inline SVG: no script and nothing loaded
from the network, so the file opens anywhere, offline, and can be attached to an LMS.
"""
from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any, Mapping

import jinja2
import matplotlib
from matplotlib.figure import Figure

from . import RunReport, plain
from .gradescope import summary_line
from .json import to_dict
from .timeline import COMPLETIONS, Timeline, build, cited, label_lanes, throughput

_TRACE_ID = re.compile(r"\b[0-9a-f]{32}\b")

COLOURS = {"ok": "#2e7d32", "fail": "#ef6c00", "info": "#6a1b9a", "fault": "#1565c0", "violation": "#c62828"}
STATE_CLASS = {"PASS": "pass", "FAIL": "fail", "ERROR": "error", "SKIP": "skip"}


def timeline_svg(tl: Timeline, violations: list | None = None) -> str:
    """Two stacked plots sharing time: completions/s per outcome, and each operation's latency."""
    if not tl.ops and not tl.faults:
        return ""
    violations = violations or []
    with matplotlib.rc_context({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False,
                                "axes.spines.right": False}):
        fig = Figure(figsize=(10, 5.2), layout="constrained")
        rate_ax, lat_ax = fig.subplots(2, 1, sharex=True, height_ratios=[1, 1.3])
        xs, per_outcome = throughput(tl)
        for outcome in COMPLETIONS:
            if any(per_outcome[outcome]):  # one more point so the last bin is drawn to its end
                rate_ax.step(xs + [len(xs)], per_outcome[outcome] + per_outcome[outcome][-1:], where="post",
                             color=COLOURS[outcome], label=outcome, lw=1.4)
        rate_ax.set_ylabel("completions / s")
        lat_ax.set_ylabel("latency (ms)")
        lat_ax.set_xlabel("seconds since the run started")
        for outcome in COMPLETIONS:
            done = [op for op in tl.ops if op.outcome == outcome and op.latency is not None]
            if done:
                lat_ax.scatter([op.end for op in done], [max(op.latency * 1000, 0.1) for op in done], s=7,
                               color=COLOURS[outcome], alpha=0.6, lw=0, label=outcome)
        if any(op.latency for op in tl.ops):
            lat_ax.set_yscale("log")
        if violations:
            lat_ax.scatter([op.end or op.start for op in violations],
                           [max((op.latency or 0) * 1000, 0.1) for op in violations], marker="x", s=40,
                           color=COLOURS["violation"], lw=1.6, label="cited by a failing check", zorder=5)
        for t, _ in tl.marks:
            for ax in (rate_ax, lat_ax):
                ax.axvline(t, color=COLOURS["violation"], lw=1.2, ls=":")
        # Faults are numbered above the plot (the table under it names them): labels of faults close in
        # time go to lanes of their own instead of printing over each other.
        lanes = label_lanes([w.start for w in tl.faults], min_gap=max(tl.duration, 1.0) * 0.025)
        for number, (window, lane) in enumerate(zip(tl.faults, lanes), 1):
            for ax in (rate_ax, lat_ax):
                if window.end is not None and window.end > window.start:
                    ax.axvspan(window.start, window.end, color=COLOURS["fault"], alpha=0.13, lw=0)
                else:
                    ax.axvline(window.start, color=COLOURS["fault"], lw=1, ls="--", alpha=0.7)
            rate_ax.annotate(str(number), (window.start, 1), xycoords=("data", "axes fraction"),
                             xytext=(0, 3 + 10 * lane), textcoords="offset points", ha="center", va="bottom",
                             fontsize=7, color=COLOURS["fault"], annotation_clip=False)
        for ax in (rate_ax, lat_ax):
            ax.grid(alpha=0.25)  # the page carries the legend, with counts
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})  # same run, same bytes
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]  # inline: no XML declaration or doctype


def failing_traces(report: Mapping, events: list[dict], limit: int = 5) -> list[dict]:
    """Waterfalls (grader/report/waterfall.py) of the traces that failing checks cite by trace id."""
    try:
        from ..otlp.spans import SPAN_EVENT, Span
        from .waterfall import trace_text
    except ImportError:  # a kit without the trace tooling: the section says there is nothing to show
        return []
    text = "\n".join(e for c in report.get("checks", []) if c.get("state") in ("FAIL", "ERROR")
                     for e in c.get("evidence", []))
    cited = list(dict.fromkeys(_TRACE_ID.findall(text)))
    if not cited:
        return []
    spans = [Span.from_record(e.get("data") or {}) for e in events if e.get("kind") == SPAN_EVENT]
    known = {s.trace_id for s in spans}
    traces = []
    for trace_id in [t for t in cited if t in known][:limit]:
        try:
            traces.append({"title": f"trace {trace_id}", "text": trace_text(spans, trace_id)})
        except Exception as e:  # a report must still be written when one trace cannot be drawn
            traces.append({"title": f"trace {trace_id}", "text": f"could not be drawn: {type(e).__name__}: {e}"})
    return traces


def _events(history: str | Path | None) -> list[dict]:
    if not history or not Path(history).exists():
        return []
    events = []
    for line in Path(history).read_text(errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


_ENV = jinja2.Environment(loader=jinja2.PackageLoader("grader.report", "templates"),
                          autoescape=jinja2.select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)


def render_html(report: RunReport | Mapping, history: str | Path | Timeline | None = None) -> str:
    """The page as a string. `history`: a history.jsonl path (or a built Timeline) for the timeline."""
    data = to_dict(report) if isinstance(report, RunReport) else dict(report)
    events = [] if isinstance(history, Timeline) else _events(history)
    tl = history if isinstance(history, Timeline) else build(events)
    evidence = [e for c in data.get("checks", []) if c.get("state") == "FAIL" for e in c.get("evidence", [])]
    violations = cited(tl, evidence)
    logs = {name: plain(log).rstrip() for name, log in (data.get("logs") or {}).items()
            if name in (data.get("crashed") or []) or "Traceback (most recent call last)" in log}
    return _ENV.get_template("report.html.j2").render(
        r=data, summary=summary_line(data), state_class=STATE_CLASS, timeline=timeline_svg(tl, violations),
        faults=[(w, _described(w, data.get("faults") or [])) for w in tl.faults], unavailable=tl.unavailable, ops=len(tl.ops), violations=violations,
        outcomes={k: sum(op.outcome == k for op in tl.ops) for k in COMPLETIONS},
        traces=failing_traces(data, events), logs=logs)


def _described(window, faults: list[dict]) -> dict:
    """The report's summary of the fault a timeline window shows (what it did, whether it bit)."""
    for f in faults:
        if f.get("fault") == window.name and str(f.get("target")) == window.target and f.get("start") is not None \
                and abs(float(f["start"]) - window.start) < 1e-3:
            return f
    return {}


def write_html(report: RunReport | Mapping, path: str | Path, history: str | Path | Timeline | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(report, history))


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


_ENV.filters["num"] = _fmt
