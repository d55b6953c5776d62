"""The learner's view: a table of checks, then what failed, the evidence, and the hint.

Every string goes through safe_text.markup_safe: messages, evidence, notes and logs carry what a
submission shaped (span names, rows, log lines), and must neither drive the terminal nor be markup."""
from __future__ import annotations

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from ..checks import CheckResult, shown
from . import RunReport, plain
from .safe_text import markup_safe


def escape(text: object) -> str:
    return markup_safe(text, multiline=True)

STYLE = {"PASS": "green", "FAIL": "red", "ERROR": "yellow", "SKIP": "dim"}


def _state(result: CheckResult) -> str:
    return f"[{STYLE[result.state]}]{result.state}[/]"


def _details(result: CheckResult) -> Panel:
    lines = [escape(result.message)]
    lines += [f"  • {escape(item)}" for item in shown(result.evidence)]
    if result.hint:
        lines.append(f"[bold]hint:[/] {escape(result.hint)}")
    return Panel("\n".join(lines), title=f"{_state(result)} {escape(result.title)}", title_align="left")


def fault_table(report: RunReport) -> Table:
    """The faults injected, one line each whatever the width: when, what on what, whether it bit.
    What each did in detail is in report.html (and report.json)."""
    table = Table(title="faults injected (details in report.html)", title_justify="left", box=None, pad_edge=False,
                  show_header=False, padding=(0, 1), expand=True)
    table.add_column("when", no_wrap=True, min_width=9)
    table.add_column("fault", no_wrap=True, overflow="ellipsis", ratio=1)
    table.add_column("bit", no_wrap=True, min_width=9)
    for f in report.faults:
        what = f.get("description") or f"{f['fault']} {f['target']}"
        if f.get("reason"):
            table.add_row("   -   ", escape(f"{what}: {f['reason']}"), "[dim]not here[/]")
            continue
        start, end = f.get("start"), f.get("end")
        when = f"{start:5.1f}s" if start is not None else "   -  "
        if end is not None and start is not None and end - start >= 0.5:
            when += f"+{end - start:.0f}s"
        table.add_row(when, escape(what), "[green]bit[/]" if f["effective"] else "[yellow]no effect[/]")
    return table


def summary_line(report: RunReport) -> str:
    """The verdicts once more, in one line next to the score: what failed, what was not verified."""
    parts = []
    for state in ("FAIL", "ERROR", "SKIP"):
        ids = [r.id for r in report.results if r.state == state]
        if ids:
            parts.append(f"[{STYLE[state]}]{state}[/] {escape(', '.join(ids))}")
    return "  ·  ".join(parts) or "[green]every check passed[/]"


def print_report(report: RunReport, console: Console | None = None) -> None:
    """Verdicts and evidence first; then the compact fault list, notes and the services' own errors;
    last the score with the verdicts in one line, so it stays in view."""
    console = console or Console()
    table = Table(expand=True, title=escape(f"{report.lab}: {report.title}"),
                  caption=escape(f"{report.submission} · {report.runtime} runtime · seed {report.seed} · "
                                 f"{report.duration:.0f}s"))
    table.add_column("check", ratio=1, min_width=18)
    table.add_column("result", no_wrap=True)
    table.add_column("points", justify="right", no_wrap=True)
    table.add_column("", no_wrap=True, overflow="ellipsis", ratio=1)  # in full in the panels below
    for r in report.results:
        points = f"{r.points:g}/{r.max_points:g}"
        table.add_row(escape(r.title), _state(r), points, escape(r.message))
    console.print(table)
    errors = {r.message for r in report.results if r.state == "ERROR"}
    shared_error = len(errors) == 1 and all(r.state == "ERROR" for r in report.results if not r.passed)
    for r in report.results:
        if not r.passed and not (shared_error and r.state == "ERROR"):
            console.print(_details(r))
    if shared_error:  # one cause (the run stopped): say it once
        console.print(Panel(escape(errors.pop()), title="[yellow]ERROR[/] the run could not finish", title_align="left"))
    if report.faults:
        console.print(fault_table(report))
    for note in report.notes:
        if not note.startswith("nemesis plan:"):  # the plans are in report.html (and were shown as the run went)
            console.print(f"[dim]note:[/] {escape(note)}")
    for name, log in report.logs_to_show().items():
        console.print(Panel(escape(plain(log).rstrip()), title=escape(f"{name}: last log lines"), title_align="left",
                            style="dim"))
    colour = "green" if report.passed else "red"
    console.print(f"[bold {colour}]score {report.score:g}/{report.max_score:g}[/]   {summary_line(report)}")
    console.print(f"seed {report.seed}, replay this run: [bold]{escape(report.replay_command())}[/]")
