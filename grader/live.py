"""`make lab-N`: the stack, the learner's services, steady traffic and a live terminal view.

The view fits the terminal (80x24 included): a status line first (so it is never cut off), the
services one line each, the lab's numbers two to a line, then as much of the latest trace as the
rows left allow. It is redrawn from a snapshot twice a second: the numbers are read in a thread of
their own, so a slow read (a broker restarting, rabbitmqctl under load) never freezes the view, and
starting or failing is said in words, not shown as an empty table.
"""
from __future__ import annotations

import importlib
import signal
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .lab import Lab
from .launch import ServiceFailed
from .report.logs import is_noise
from .report.safe_text import markup_safe, printable
from .runner import LIVE_SPAN_DELAY_MS, Run, new_seed, prepare


@dataclass
class LiveState:
    """What the view shows: set by the run's threads, read by the view."""

    state: str = "starting"  # starting | running | failed | stopping
    detail: str = ""  # what it is waiting for, or why it failed
    started: float = field(default_factory=time.monotonic)
    running_since: float | None = None
    metrics: dict[str, str] = field(default_factory=dict)
    metrics_at: float | None = None
    metrics_error: str = ""


def latest_trace(run: Run, max_spans: int = 12, bar_width: int = 20):
    """The waterfall of the latest request whose spans reached the last service of the chain."""
    from .otlp import spans_from_history
    from .report.waterfall import render_trace

    spans = spans_from_history(run.history)
    traced = {op.invoke.get("trace_id") for op in run.history.ops()[-50:] if op.type == "ok"}
    complete = [s.trace_id for s in spans if s.kind == "CONSUMER" and s.trace_id in traced]
    if not complete:
        return Text("no complete trace yet", style="dim")
    return render_trace(spans, complete[-1], max_spans=max_spans, bar_width=bar_width)


def last_line(service) -> str:
    """The service's latest log line that is its own (not a client's note about a lost connection)."""
    lines = [line for line in (service.log_tail(20) or "").splitlines() if line.strip() and not is_noise(line)]
    return printable(lines[-1].strip()) if lines else ""  # the submission's own text


def _status(run: Run, live: LiveState) -> Text:
    now = time.monotonic()
    style = {"starting": "yellow", "running": "green", "failed": "bold red", "stopping": "yellow"}[live.state]
    text = Text.assemble((f"{run.lab.id} ", "bold"), (live.state, style))
    if live.state == "running" and live.running_since is not None:
        text.append(f" {now - live.running_since:.0f}s")
    elif live.state == "starting":
        text.append(f" {now - live.started:.0f}s")
    if live.detail:
        text.append(f" · {printable(live.detail)}", style=style if live.state == "failed" else "")
    text.append("  ·  Ctrl-C stops everything", style="dim")
    return text


def _services(run: Run, width: int) -> Table:
    table = Table.grid(padding=(0, 1), expand=True)
    table.add_column(no_wrap=True)
    table.add_column(no_wrap=True)
    table.add_column(no_wrap=True, overflow="ellipsis", ratio=1)
    for name, service in run.services.items():
        if service.alive():
            state = "[green]up[/]" + (f" [yellow]↻{service.restarts}[/]" if service.restarts else "")
        elif getattr(service, "proc", None) is None:
            state = "[dim]not started[/]"
        else:
            state = f"[red]exited ({service.exit_code()})[/]"
        table.add_row(name, state, Text(last_line(service), style="dim"))
    return table


def _numbers(live: LiveState) -> Table | Text:
    if not live.metrics:
        waiting = "reading the numbers ..." if live.state == "running" else "numbers once the services run"
        return Text(printable(live.metrics_error) or waiting, style="dim")
    table = Table.grid(padding=(0, 2), expand=True)
    for _ in range(2):
        table.add_column(no_wrap=True, overflow="ellipsis", ratio=1)
    items = [Text.assemble((f"{printable(k)}: ", "dim"), printable(v)) for k, v in live.metrics.items()]
    for i in range(0, len(items), 2):
        table.add_row(*items[i:i + 2])
    return table


def view(run: Run, live: LiveState, width: int = 80, height: int = 24) -> Group:
    """The whole view for a terminal of width x height: what is left under the status, the services
    and the numbers goes to the trace; the footer line (where the logs are) comes last."""
    numbers = _numbers(live)
    parts = [_status(run, live), _services(run, width), numbers]
    used = 1 + len(run.services) + (1 if isinstance(numbers, Text) else (len(live.metrics) + 1) // 2)
    if live.metrics_error and live.metrics:
        parts.append(Text(f"numbers {time.monotonic() - (live.metrics_at or 0):.0f}s old: {printable(live.metrics_error)}",
                          style="yellow", no_wrap=True, overflow="ellipsis"))
        used += 1
    room = height - used - 3  # the trace's title line, its head line, the footer
    if room >= 2:
        parts.append(Text("latest trace", style="bold"))
        parts.append(latest_trace(run, max_spans=room - 1, bar_width=0 if width < 100 else 20))
    parts.append(Text(f"logs: {run.out_dir / 'logs'}  ·  namespace {run.ns.name}", style="dim", no_wrap=True,
                      overflow="ellipsis"))
    return Group(*parts)


def _read_metrics(scenario, run: Run, live: LiveState, stop: threading.Event) -> None:
    """The lab's numbers, read in the background: a slow or failing read only makes them older."""
    while not stop.is_set():
        try:
            since = live.running_since or time.monotonic()
            live.metrics = scenario.metrics(run, time.monotonic() - since)
            live.metrics_at, live.metrics_error = time.monotonic(), ""
        except Exception as e:  # the view must survive a broker or database restart
            first = (str(e).splitlines() or [""])[0]
            live.metrics_error = f"could not read them ({type(e).__name__}: {first})"
        stop.wait(1.0)


def run_live(lab: Lab, submission: Path, runtime: str, console: Console, rate: float = 10.0,
             out_dir: Path | None = None) -> None:
    scenario = importlib.import_module(lab.scenario)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with ExitStack() as resources:
        run = prepare(lab, submission, runtime, new_seed(),
                      out_dir or Path("results") / lab.id / "live", resources,
                      say=lambda m: console.print(f"[dim]· {markup_safe(m, multiline=True)}[/]"), learner=True,
                      span_delay_ms=LIVE_SPAN_DELAY_MS)
        console.print(f"stack ready ({run.stack.runtime}); starting {', '.join(run.services)} from "
                      f"{markup_safe(submission)}")
        live = LiveState()

        def render():
            return view(run, live, console.size.width, console.size.height)

        failure = ""
        with Live(get_renderable=render, console=console, refresh_per_second=2, transient=False,
                  vertical_overflow="crop"):
            try:
                if hasattr(scenario, "before_start"):  # what the services need from the grader (lab 4's gateway)
                    live.detail = "preparing what the services need"
                    scenario.before_start(run)
                for service in run.services.values():
                    service.start()
                for name, service in run.services.items():
                    live.detail = f"waiting for {name} to be ready"
                    service.wait_healthy()
            except ServiceFailed as e:
                failure = str(e)
            except Exception as e:  # a stack or topology error: say it in full below, not cut in a cell
                failure = f"{type(e).__name__}: {e}"
            if failure:
                live.state, live.detail = "failed", (failure.splitlines() or [""])[0]
            else:
                live.state, live.detail, live.running_since = "running", "", time.monotonic()
                threading.Thread(target=_read_metrics, args=(scenario, run, live, stop), daemon=True,
                                 name="live-metrics").start()
                sender = threading.Thread(target=scenario.traffic, args=(run, stop, rate), daemon=True)
                sender.start()
                stop.wait()
                live.state = "stopping"
        if failure:
            console.print(f"[bold red]the services could not start:[/] {markup_safe(failure, multiline=True)}",
                          highlight=False)
            console.print(f"logs: {run.out_dir / 'logs'}")
            return
        console.print("stopping services and the stack ...")
        sender.join(30)
    console.print("stopped; nothing left behind")
