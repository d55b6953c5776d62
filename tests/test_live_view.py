"""`make lab-N`'s live view at 80x24: every part fits (the status first, the footer last, the latest
trace in the rows left), starting and failing are said in words, and lab 3 shows what its checks judge."""
from __future__ import annotations

import io
import time
from pathlib import Path
from types import SimpleNamespace

from rich.console import Console

from grader.history import History
from grader.live import LiveState, view
from grader.otlp.spans import SPAN_EVENT, Span


class FakeService:
    def __init__(self, up: bool = True, log: str = "", started: bool = True):
        self.restarts, self._up, self._log = 1, up, log
        self.proc = object() if started else None

    def alive(self) -> bool:
        return self._up

    def exit_code(self):
        return None if self._up else 1

    def log_tail(self, lines: int = 30) -> str:
        return self._log


def fake_run(services: dict) -> SimpleNamespace:
    history = History()
    trace = "ab" * 16
    history.record("invoke", "client", id=1, f="place", trace_id=trace)
    history.record("ok", "client", id=1, f="place")
    t0 = time.time_ns()
    for i in range(30):  # a trace longer than the screen
        kind = "CONSUMER" if i == 29 else "INTERNAL"
        span = Span(trace, f"{i + 1:016x}", f"{i:016x}" if i else "", f"step {i}", kind, "read_model",
                    t0 + i * 1_000_000, t0 + (i + 1) * 1_000_000)
        history.record(SPAN_EVENT, "otlp", **span.record())
    return SimpleNamespace(lab=SimpleNamespace(id="lab-1"), services=services, history=history,
                           out_dir=Path("/tmp/results/lab-1/live"), ns=SimpleNamespace(name="lab1_abc123"))


def render(run, live: LiveState) -> list[str]:
    out = io.StringIO()
    console = Console(file=out, width=80, height=24, color_system=None, force_terminal=False)
    console.print(view(run, live, 80, 24))
    return out.getvalue().splitlines()


def test_running_view_fits_80x24_with_footer_and_trace():
    noisy = "%6|1764789000.123|FAIL|rdkafka#consumer-1| [thrd:x]: Disconnected"
    run = fake_run({"order_api": FakeService(log="order_api INFO ready\n" + noisy),
                    "read_model": FakeService(up=False, log="BadEvent: missing fields\n" + noisy)})
    live = LiveState(state="running", running_since=time.monotonic() - 12,
                     metrics={f"metric {i}": "x" * 50 for i in range(7)}, metrics_at=time.monotonic())
    lines = render(run, live)
    assert len(lines) <= 24 and max(len(line) for line in lines) <= 80
    assert lines[0].startswith("lab-1 running 12s")
    assert lines[-1].startswith("logs: /tmp/results/lab-1/live")
    assert any("latest trace" in line for line in lines) and any("more span" in line for line in lines)
    assert any("order_api INFO ready" in line for line in lines), "the service's own line, not librdkafka's"
    assert any("exited (1)" in line for line in lines)


def test_starting_and_failed_are_said_in_words():
    run = fake_run({"worker": FakeService(up=False, started=False)})
    starting = render(run, LiveState(detail="waiting for worker to be ready"))
    assert starting[0].startswith("lab-1 starting") and "waiting for worker" in starting[0]
    assert any("not started" in line for line in starting)
    failed = render(run, LiveState(state="failed", detail="StackError: rabbitmqctl timed out after 60 s"))
    assert "failed · StackError: rabbitmqctl timed out" in failed[0]
    stale = LiveState(state="running", running_since=time.monotonic(), metrics={"a": "1"},
                      metrics_at=time.monotonic() - 30, metrics_error="could not read them (TimeoutError: slow)")
    assert any("30s old" in line for line in render(run, stale))


def test_lab3_live_numbers_show_what_the_checks_judge():
    from grader.scenarios.lab3 import hot_key_reads, last_write_staleness

    history = History()
    history.record("invoke", "client", id=1, f="put", product="p-1")
    history.record("ok", "client", id=1, f="put", body={"version": 2})
    for i, version in ((2, 1), (3, 1), (4, 2)):
        history.record("invoke", "client", id=i, f="get", product="p-1")
        history.record("ok", "client", id=i, f="get", body={"version": version})
    assert last_write_staleness(history).startswith("p-1 v2: visible after")
    history.record("invoke", "client", id=9, f="put", product="p-2")
    history.record("ok", "client", id=9, f="put", body={"version": 5})
    history.record("invoke", "client", id=10, f="get", product="p-2")
    history.record("ok", "client", id=10, f="get", body={"version": 4})
    assert last_write_staleness(history).startswith("p-2 v5: still stale")
    reads = [(10.0, "p-1", 1), (10.5, "p-1", 1), (11.0, "p-2", 1), (1.0, "p-1", 1)]
    assert hot_key_reads(reads, ["p-1", "p-2"], now=12.0, window=5.0) == "max 2 (p-1), 1.5 on average"
