"""The learner's view: a table of checks, then what failed, the evidence, and the hint."""
from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from . import RunReport


def _state(result) -> str:
    if result.passed:
        return "[green]PASS[/]"
    return "[yellow]ERROR[/]" if result.errored else "[red]FAIL[/]"


def print_report(report: RunReport, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"{report.lab}: {report.title}", caption=f"{report.submission} · {report.runtime} runtime · "
                  f"seed {report.seed} · {report.duration:.0f}s")
    table.add_column("check")
    table.add_column("result")
    table.add_column("points", justify="right")
    table.add_column("")
    for r in report.results:
        table.add_row(r.title if r.title != r.id else r.id, _state(r), f"{r.points:g}/{r.max_points:g}", escape(r.message))
    console.print(table)
    for r in report.results:
        if r.passed:
            continue
        lines = [escape(r.message)]
        lines += [f"  • {escape(e)}" for e in r.evidence]
        if r.hint:
            lines.append(f"[bold]hint:[/] {escape(r.hint)}")
        console.print(Panel("\n".join(lines), title=f"{_state(r)} {r.id}", title_align="left"))
    crashed = {name: log for name, log in report.logs.items() if "exited" in log or "Traceback" in log}
    for name, log in crashed.items():
        console.print(Panel(escape(log), title=f"{name}: last log lines", title_align="left", style="dim"))
    colour = "green" if report.passed else "red"
    console.print(f"[bold {colour}]score {report.score:g}/{report.max_score:g}[/]   "
                  f"replay this run: [bold]labkit check {report.lab} --seed {report.seed}[/]")
