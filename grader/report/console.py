"""The learner's view: a table of checks, then what failed, the evidence, and the hint."""
from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from ..checks import CheckResult, shown
from . import RunReport, plain

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
    """The faults injected: what, on what, when, and whether each bit (a check needs them to)."""
    table = Table("fault", "target", "from", "to", "bit", "what happened", title="faults injected", title_justify="left")
    for f in report.faults:
        if f.get("reason"):
            table.add_row(escape(f["fault"]), escape(str(f["target"])), "-", "-", "[dim]not here[/]", escape(f["reason"]))
            continue
        start, end = f.get("start"), f.get("end")
        what = f.get("description") or ""
        how = (f.get("detail") or {}).get("how")
        table.add_row(escape(f["fault"]), escape(str(f["target"])), f"{start:.1f}s" if start is not None else "-",
                      f"{end:.1f}s" if end is not None else "-", "[green]yes[/]" if f["effective"] else "[yellow]no[/]",
                      escape(what + (f" ({how})" if how else "")))
    return table


def print_report(report: RunReport, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=escape(f"{report.lab}: {report.title}"),
                  caption=escape(f"{report.submission} · {report.runtime} runtime · seed {report.seed} · "
                                 f"{report.duration:.0f}s"))
    table.add_column("check")
    table.add_column("result")
    table.add_column("points", justify="right")
    table.add_column("")
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
    for service, covered in report.coverage.items():
        console.print(f"[dim]crash coverage:[/] {escape(service)}: {escape(covered)}")
    for note in report.notes:
        console.print(f"[dim]note:[/] {escape(note)}")
    for name, log in report.logs_to_show().items():
        console.print(Panel(escape(plain(log).rstrip()), title=escape(f"{name}: last log lines"), title_align="left",
                            style="dim"))
    colour = "green" if report.passed else "red"
    console.print(f"[bold {colour}]score {report.score:g}/{report.max_score:g}[/]   "
                  f"seed {report.seed}, replay this run: [bold]{escape(report.replay_command())}[/]")
