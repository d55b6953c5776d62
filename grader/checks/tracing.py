"""The `traces` check every lab has, judged from the history (spans the grader's OTLP receiver
recorded, operations, observations) with the checkers of grader/traces.

What a lab's trace phase leaves in the history (grader/workloads/tracing.py):
- operations tagged `probe="trace"`: requests sent in a quiet moment, each with the grader's own
  traceparent, whose whole chain of spans must arrive;
- `observe what="trace-records"`: the records those requests produced (their traceparent headers);
- a `duplicates` fault with `probe="trace"` records: a redelivery must show as another span;
- a `poison` fault with traceparents: a dead-lettered record's span must carry an ERROR status;
- `observe what="shutdown"`: the services were stopped with SIGTERM before the spans were judged,
  and they run with a batch delay longer than the run, so only a flush at exit delivers them.

Semantic conventions: OpenTelemetry 1.37.0 (see grader/traces/checks.py for the accepted older names).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..history import History
from ..nemesis import fault_events
from ..otlp import capped_limits, spans_from_history
from ..report.waterfall import faults_in_span_clock
from ..traces import (ExpectedError, Operation, RecordHeader, Redelivery, Sel, Step, check_connected_traces,
                      check_error_status, check_no_secret_leaks, check_redelivery, check_semantic_conventions,
                      check_spans_after_shutdown, check_trace_headers, combine)
from .result import CheckResult


def wall_t0_ns(history: History) -> int:
    for e in history.events("note"):
        if "wall_t0_ns" in e.data:
            return int(e.data["wall_t0_ns"])
    return 0


def traced_operations(history: History) -> list[Operation]:
    return [Operation(f"{op.f} request #{op.id} (key {op.invoke.get('key')})", op.invoke["trace_id"],
                      op.invoke.get("parent_span_id", ""))
            for op in history.ops() if op.invoke.get("probe") == "trace" and op.type == "ok" and op.invoke.get("trace_id")]


@dataclass
class ChainEvidence:
    """What a lab's trace phase says each check should find: messages with their traceparent,
    redeliveries that must show as more CONSUMER spans, failures that must carry an ERROR status."""
    headers: list[RecordHeader]
    redelivered: list[Redelivery]
    errors: list[ExpectedError]


@dataclass
class ChainTitles:
    """How the sub-checks are named in a lab's words (orders and records, payments and messages)."""
    none: str  # the ERROR message when no traced request was acknowledged
    connected: str
    headers: str
    redelivered: str
    errors: str


def chain_trace_check(chain: list[Step], evidence: Callable[[History], ChainEvidence],
                      secret_of: Callable[[History], list[str]], titles: ChainTitles):
    """A `traces` checker for a chain of spans from the API's SERVER span to the consumer's CONSUMER
    span: connected traces, traceparent headers, conventions (every service of the chain), redeliveries,
    ERROR status, no secret, and spans flushed on SIGTERM (the chain's first and last services)."""
    services = list(dict.fromkeys(step.service for step in chain))

    def check(history: History, **args) -> CheckResult:
        spans = spans_from_history(history)
        faults = faults_in_span_clock(fault_events(history), wall_t0_ns(history))
        ops = traced_operations(history)
        if not ops:
            return CheckResult.error(message=titles.none, **args)
        sub = {"max_points": args["max_points"]}
        found = evidence(history)
        results = [
            check_connected_traces(spans, ops, chain, faults=faults, title=titles.connected, **sub),
            check_trace_headers(spans, found.headers, faults=faults, title=titles.headers, **sub),
            check_semantic_conventions(spans, services=services, title="span kinds and attributes",
                                       required=chain, **sub),
            check_redelivery(spans, found.redelivered, consumer=Sel(service=chain[-1].service, kind="CONSUMER"),
                             faults=faults, title=titles.redelivered, **sub),
            check_error_status(spans, found.errors, faults=faults, title=titles.errors, **sub),
            check_no_secret_leaks(spans, secret_of(history), title="no secret in any span", **sub),
        ]
        if history.last_observation("shutdown"):
            results.append(check_spans_after_shutdown(spans, ops, [Sel(service=services[0]), Sel(service=services[-1])],
                                                      faults=faults, title="spans flushed on SIGTERM", **sub))
        result = combine(args["id"], args["title"], args["max_points"], results, hint=args.get("hint"))
        capped = capped_limits(history)  # spans missing because the services sent too many: say so
        if capped and not result.passed:
            result.message = f"{result.message}; {capped[0]}"
            result.evidence[:0] = capped
        return result

    return check


def trace_check(api: str, producer: str, consumer: str, secret_of: Callable[[History], list[str]]):
    """A `traces` checker for a chain through Kafka: `api`'s SERVER span -> `producer`'s PRODUCER span
    -> `consumer`'s CONSUMER span (by parent or by span link)."""
    chain = [Step(service=api, kind="SERVER"), Step(service=producer, kind="PRODUCER"),
             Step(service=consumer, kind="CONSUMER", via_link=True)]

    def evidence(history: History) -> ChainEvidence:
        records = history.last_observation("trace-records") or {}
        return ChainEvidence(
            headers=[RecordHeader(f"record {r.get('key')} in {records.get('topic')}",
                                  r.get("headers", {}).get("traceparent"), r.get("trace_id", ""))
                     for r in records.get("records", [])],
            redelivered=[Redelivery(f"record {r.get('key')} delivered twice", r["trace_id"])
                         for r in records.get("records", []) if r.get("duplicated") and r.get("trace_id")],
            errors=[ExpectedError(f"malformed record {p['key']}", p["trace_id"], Sel(service=consumer))
                    for f in history.events("fault") if f.data.get("fault") == "poison" and f.data.get("phase") == "end"
                    for p in f.data.get("traced", [])])

    return chain_trace_check(chain, evidence, secret_of, ChainTitles(
        none="no traced request was acknowledged (the run did not get there)",
        connected="one connected trace per order", headers="records carry their PRODUCER span's context",
        redelivered="a redelivery is another CONSUMER span", errors="dead-lettered records have an ERROR span"))


def run_secret(history: History) -> list[str]:
    """The seeded secret the grader's client sent in its Authorization header."""
    for e in history.events("note"):
        if "secret" in e.data:
            return [str(e.data["secret"])]
    return []
