"""`make lab-N`: the stack, the learner's services, steady traffic and a live terminal view."""
from __future__ import annotations

import importlib
import signal
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .lab import Lab
from .launch import ServiceFailed
from .report.safe_text import markup_safe, printable
from .runner import LIVE_SPAN_DELAY_MS, Run, new_seed, prepare


def latest_trace(run: Run):
    """The waterfall of the latest request whose spans reached the last service of the chain."""
    from .otlp import spans_from_history
    from .report.waterfall import render_trace

    spans = spans_from_history(run.history)
    traced = {op.invoke.get("trace_id") for op in run.history.ops()[-50:] if op.type == "ok"}
    complete = [s.trace_id for s in spans if s.kind == "CONSUMER" and s.trace_id in traced]
    return render_trace(spans, complete[-1], max_spans=12) if complete else Text("no complete trace yet", style="dim")


def view(run: Run, shown: dict[str, str], started: float) -> Group:
    services = Table("service", "state", "restarts", "last log line", title=f"{run.lab.id}: {run.lab.title}",
                     expand=True)
    for name, service in run.services.items():
        state = "[green]running[/]" if service.alive() else f"[red]exited ({service.exit_code()})[/]"
        last = printable((service.log_tail(1) or "").strip()[-100:])  # the submission's own text
        services.add_row(name, state, str(service.restarts), Text(last, style="dim"))
    numbers = Table("metric", "value", expand=True)
    for key, value in shown.items():
        numbers.add_row(Text(printable(key)), Text(printable(value)))
    footer = Text(f"up {time.monotonic() - started:.0f}s  ·  namespace {run.ns.name}  ·  logs in "
                  f"{run.out_dir / 'logs'}  ·  Ctrl-C stops everything", style="dim")
    return Group(services, numbers, Text("latest trace", style="bold"), latest_trace(run), footer)


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
        if hasattr(scenario, "before_start"):  # what the services need from the grader (e.g. lab 4's gateway)
            scenario.before_start(run)
        for service in run.services.values():
            service.start()
        try:
            for service in run.services.values():
                service.wait_healthy()
        except ServiceFailed as e:
            console.print(f"[bold red]a service failed to start:[/] {markup_safe(e, multiline=True)}")
            return
        sender = threading.Thread(target=scenario.traffic, args=(run, stop, rate), daemon=True)
        sender.start()
        started = time.monotonic()
        with Live(view(run, {}, started), console=console, refresh_per_second=2) as live:
            while not stop.wait(1.0):
                live.update(view(run, scenario.metrics(run, time.monotonic() - started), started))
        console.print("stopping services and the stack ...")
        sender.join(30)
    console.print("stopped; nothing left behind")
