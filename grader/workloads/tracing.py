"""The trace phase every lab ends with (judged by grader/checks/tracing.py).

In a quiet moment: a few requests tagged `probe="trace"`, each with the grader's own traceparent;
once applied, copies of their records are injected (a redelivery must show as another span);
their records are observed with their headers; then the services are stopped with SIGTERM (they
run with a batch delay longer than the run, so only a flush at exit delivers their last spans),
and the grader waits, bounded, until every probe's spans arrived or the time is up.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from ..nemesis import Duplicates
from ..nemesis.duplicates import read_all
from ..wait import WaitTimeout, wait_until
from .http import Reply

if TYPE_CHECKING:
    from ..runner import Run

SPANS_WITHIN = 15.0  # seconds after the SIGTERMs for the flushed spans to arrive


def trace_phase(run: "Run", place: Callable[[], Reply], record_key: Callable[[Reply], str | None],
                applied: Callable[[str], bool], settled: Callable[[], bool], topic: str,
                stop: list[str], consumer: str, count: int = 5, timeout: float = 30) -> None:
    """`place()` sends one traced request; `record_key(reply)` is the key of the record it causes;
    `applied(key)` says the consumer applied it; `settled()` that the consumer caught up."""
    traced = {}
    for _ in range(count):
        reply = place()
        key = record_key(reply) if reply.ok else None
        if key:
            traced[key] = reply.trace_id
    _wait(lambda: all(applied(k) for k in traced), timeout)
    if traced:
        Duplicates(topic, len(traced), run.seed, keys=set(traced)).apply(run)
        _wait(settled, timeout)
    seen: dict[str, int] = {}
    records = []
    for m in read_all(run.kafka, topic):
        key = (m.key() or b"").decode(errors="replace")
        if key in traced:
            seen[key] = seen.get(key, 0) + 1
            records.append({"key": key, "partition": m.partition(), "offset": m.offset(), "trace_id": traced[key],
                            "headers": {k: (v or b"").decode(errors="replace") for k, v in (m.headers() or [])}})
    for r in records:
        r["duplicated"] = seen[r["key"]] > 1
    run.history.observe("trace-records", topic=topic, records=records)
    codes = {}
    for name in stop:  # SIGTERM: a clean shutdown must flush what the exporter still holds
        service = run.services[name]
        service.stop()
        codes[name] = service.exit_code()
    run.history.observe("shutdown", services=codes)
    consumer_spans = lambda: {e.data.get("trace_id") for e in run.history.events("span")  # noqa: E731
                              if e.data.get("service") == consumer}
    _wait(lambda: set(traced.values()) <= consumer_spans(), SPANS_WITHIN)


def _wait(condition: Callable[[], bool], timeout: float) -> bool:
    try:
        return bool(wait_until(condition, timeout, "the trace phase", interval=0.1, ignore=(Exception,)))
    except WaitTimeout:
        return False  # the checks say what is missing
