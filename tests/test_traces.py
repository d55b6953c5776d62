"""Trace selectors, assertions, checkers and the waterfall: first on hand-made spans (every rule and
its evidence), then on spans from REAL services - lab 1's reference and its trace mutants, run as
processes against a native Kafka + PostgreSQL and exporting to the grader's OTLP receiver."""
from __future__ import annotations

import random
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Producer
from rich.console import Console

from grader.checks import CheckResult
from grader.history import History
from grader.kafka import QUIET, ensure_topics, group_lag
from grader.lab import find_lab
from grader.launch import Service
from grader.nemesis.duplicates import read_all
from grader.otlp import OtlpReceiver, Span
from grader.report.waterfall import faults_in_span_clock, render_trace, trace_text
from grader.stack import make_stack
from grader.traces import (ANY, Expectation, ExpectedError, Operation, OperationSpans, RecordHeader, Redelivery, Sel,
                           SpanIndex, Step, check_connected_traces, check_error_status, check_no_secret_leaks,
                           check_redelivery, check_semantic_conventions, check_spans_after_shutdown,
                           check_trace_headers, combine, new_traceparent, parse_traceparent, wait_for_traces)
from grader.wait import wait_until

CHAIN = [Step(service="order_api", kind="SERVER"), Step(kind="PRODUCER"), Step(service="read_model", kind="CONSUMER")]
B = 1_700_000_000_000_000_000  # unix ns
T1, T2, T3 = "a" * 32, "b" * 32, "c" * 32
CLIENT = "9" * 16  # the grader's own span id in the traceparent it sent


def ms(n: float) -> int:
    return B + int(n * 1_000_000)


def sid(c: str) -> str:
    return c * 16 if len(c) == 1 else c


def span(name: str, kind: str, service: str, span_id: str, parent: str = "", trace: str = T1, start: float = 0,
         end: float = 10, attrs: dict | None = None, links: tuple = (), status: str = "UNSET", message: str = "",
         events: tuple = ()) -> Span:
    return Span(trace, sid(span_id), sid(parent) if parent else "", name, kind, service, ms(start), ms(end),
                dict(attrs or {}), events, links, {"code": status, "message": message})


def link(trace: str, span_id: str, **attrs) -> dict:
    return {"trace_id": trace, "span_id": sid(span_id), "attributes": attrs}


HTTP = {"http.request.method": "POST", "http.response.status_code": 201, "http.route": "/orders", "url.path": "/orders"}
SEND = {"messaging.system": "kafka", "messaging.destination.name": "orders", "messaging.operation.type": "send"}
PROCESS = {"messaging.system": "kafka", "messaging.destination.name": "orders", "messaging.operation.type": "process"}


def good_trace(trace: str = T1, prefix: str = "1", by_link: bool = False) -> list[Span]:
    """SERVER -> PRODUCER -> CONSUMER (parented), or the consumer in its own trace with a link."""
    s, p, c = (f"{prefix}{n}" + "0" * 14 for n in "123")
    consumer = (span("process orders", "CONSUMER", "read_model", c, trace=trace[::-1] if trace[::-1] != trace else T3,
                     start=40, end=50, attrs=PROCESS, links=(link(trace, p),)) if by_link else
                span("process orders", "CONSUMER", "read_model", c, p, trace=trace, start=40, end=50, attrs=PROCESS))
    return [span("POST /orders", "SERVER", "order_api", s, CLIENT, trace=trace, end=30, attrs=HTTP),
            span("send orders", "PRODUCER", "order_api", p, s, trace=trace, start=5, end=25, attrs=SEND), consumer]


def op(trace: str = T1, label: str = "order o-1") -> Operation:
    return Operation(label, trace, CLIENT)


# --- selectors and the index -----------------------------------------------------------------

def test_selectors():
    spans = good_trace()
    assert [s.kind for s in Sel(service="order_api")(spans)] == ["SERVER", "PRODUCER"]
    assert [s.kind for s in Sel(name="send *")(spans)] == ["PRODUCER"]
    assert Sel(name="send")(spans) == []  # no glob characters: exact
    assert len(Sel(kind=("PRODUCER", "CONSUMER"))(spans)) == 2
    assert len(Sel(attrs={"messaging.system": ANY})(spans)) == 2
    assert len(Sel(attrs={"http.response.status_code": lambda v: v >= 500})(spans)) == 0
    assert len(Sel(attrs={"http.response.status_code": 201}, status="UNSET")(spans)) == 1
    assert str(Sel(service="order_api", kind="SERVER", attrs={"k": ANY})) == "span[service='order_api' kind=SERVER k=*]"
    assert Step(kind="CONSUMER").joins_by_link and not Step(kind="PRODUCER").joins_by_link
    assert not Step(kind="CONSUMER", via_link=False).joins_by_link


def test_index_relates_linked_traces_and_dedupes():
    spans = good_trace(by_link=True)
    index = SpanIndex(spans + spans[:1])  # an exporter retry delivered a span twice
    assert len(index) == 3
    consumer = index.spans[(T3, sid("13" + "0" * 14))]
    assert index.related_traces(T1) == [T1, T3] and len(index.related(T1)) == 3
    assert [s.kind for s in index.upstream(consumer, via_links=True)] == ["PRODUCER", "SERVER"]
    assert list(index.upstream(consumer, via_links=False)) == []
    assert [s.kind for s in index.roots(T1)] == ["SERVER"]


# --- assertions --------------------------------------------------------------------------------

def test_operation_assertions_report_problems():
    index = SpanIndex(good_trace())
    ok = (OperationSpans(index, T1, "order o-1").count(Sel(kind="SERVER"), exactly=1)
          .attrs(Sel(kind="SERVER"), present=["http.request.method", ("url.path", "http.route")],
                 equal={"http.route": "/orders"})
          .status(Sel(kind="PRODUCER"), "UNSET").duration(Sel(kind="CONSUMER"), max_ms=11, min_ms=9))
    assert ok.ok, ok.problems
    assert ok.joined(Sel(kind="PRODUCER"), Step(kind="CONSUMER"))
    bad = (OperationSpans(index, T1, "order o-1").count(Sel(kind="SERVER"), at_least=2)
           .attrs(Sel(kind="SERVER"), present=["nope"]).status(Sel(kind="SERVER"), "ERROR")
           .duration(Sel(kind="SERVER"), max_ms=5))
    assert len(bad.problems) == 4
    text = bad.evidence()
    assert text.startswith(f"order o-1 (trace {T1}): 1 span[kind=SERVER], expected at least 2;")
    assert "order_api SERVER POST /orders" in text  # the waterfall excerpt


def test_wait_for_traces_waits_for_the_expected_spans_not_for_silence():
    spans: list[Span] = []
    expected = [Expectation(T1, tuple(CHAIN), "order o-1")]
    arrived = threading.Event()

    def export_later() -> None:
        spans.extend(good_trace()[:2])  # the consumer's span comes in a later batch
        arrived.wait(5)
        spans.extend(good_trace()[2:])

    worker = threading.Thread(target=export_later)
    worker.start()
    wait_until(lambda: len(spans) == 2, 5, "the first batch")
    threading.Timer(0.3, arrived.set).start()
    result = wait_for_traces(lambda: list(spans), expected, timeout=10)
    worker.join()
    assert result.complete and 0.2 < result.waited < 5, result
    incomplete = wait_for_traces(lambda: good_trace()[:2], {T1: CHAIN}, timeout=0.3)
    assert not incomplete.complete and incomplete.missing == {T1: [CHAIN[2]]}
    assert "still missing" in incomplete.summary()


# --- checkers on hand-made spans ---------------------------------------------------------------

def test_connected_by_parent_or_by_link():
    spans = good_trace(T1) + good_trace(T2, prefix="2", by_link=True)
    result = check_connected_traces(spans, [op(T1), op(T2, "order o-2")], CHAIN)
    assert result.passed and result.message.startswith("2 of 2 operations"), result


def test_connected_fails_when_the_consumer_is_neither_parented_nor_linked():
    s, p, c = good_trace()
    orphan = span(c.name, "CONSUMER", "read_model", "3", trace=T3, start=40, end=50, attrs=PROCESS)
    result = check_connected_traces([s, p, orphan], [op()], CHAIN)
    assert not result.passed
    assert "no span[service='read_model' kind=CONSUMER] joined to span[kind=PRODUCER] by parent or link" in result.evidence[0]
    assert any("start a new trace with neither a parent nor a link" in e for e in result.evidence)


def test_a_chain_may_start_with_a_consumer_of_the_graders_own_record():
    chain = [Step(service="worker", kind="CONSUMER"), Step(service="worker", kind="CLIENT")]
    parented = [span("process jobs", "CONSUMER", "worker", "1", CLIENT, attrs=PROCESS),
                span("INSERT", "CLIENT", "worker", "2", "1", attrs={"db.system.name": "postgresql"})]
    linked = [span("process jobs", "CONSUMER", "worker", "3", trace=T2, attrs=PROCESS, links=(link(T1, CLIENT),)),
              span("INSERT", "CLIENT", "worker", "4", "3", trace=T2, attrs={"db.system.name": "postgresql"})]
    assert check_connected_traces(parented, [op()], chain).passed
    assert check_connected_traces(linked, [op()], chain).passed
    elsewhere = [span("process jobs", "CONSUMER", "worker", "3", trace=T2, attrs=PROCESS, links=(link(T1, "5"),))]
    assert not check_connected_traces(elsewhere, [op()], chain).passed  # linked, but not to the grader's span


def test_connected_fails_when_the_server_span_does_not_continue_the_traceparent():
    spans = [span("POST /orders", "SERVER", "order_api", "1", trace=T2, end=30, attrs=HTTP)]
    result = check_connected_traces(spans, [op()], CHAIN)
    assert not result.passed and "must continue the incoming traceparent" in result.evidence[0]


def test_connected_fails_on_wrong_kinds_and_on_a_consumer_under_the_wrong_span():
    s, p, c = good_trace()
    as_client = span(p.name, "CLIENT", p.service, p.span_id, p.parent_span_id, start=5, end=25, attrs=SEND)
    assert not check_connected_traces([s, as_client, c], [op()], CHAIN).passed
    under_server = span(c.name, "CONSUMER", "read_model", c.span_id, s.span_id, start=40, end=50, attrs=PROCESS)
    result = check_connected_traces([s, p, under_server], [op()], CHAIN)
    assert not result.passed and "none descends from span[kind=PRODUCER]" in result.evidence[0]
    assert check_connected_traces([], [], CHAIN).skipped


def test_trace_headers_name_the_producer_span():
    spans = good_trace()
    producer = spans[1]
    good = RecordHeader("orders[0]@0", f"00-{T1}-{producer.span_id}-01", T1)
    assert check_trace_headers(spans, [good]).passed
    cases = {
        "no traceparent header": RecordHeader("r1", None, T1),
        "malformed traceparent": RecordHeader("r2", "00-xyz", T1),
        "not the request's trace": RecordHeader("r3", f"00-{T2}-{producer.span_id}-01", T1),
        "never received": RecordHeader("r4", f"00-{T1}-{'7' * 16}-01", T1),
        "not a span[kind=PRODUCER]": RecordHeader("r5", f"00-{T1}-{spans[0].span_id}-01".encode(), T1),
    }
    for expected, record in cases.items():
        result = check_trace_headers(spans, [record])
        assert not result.passed and expected in result.evidence[0], (expected, result.evidence)


def test_semantic_conventions_current_and_older_names():
    spans = good_trace()
    old = [span("orders send", "PRODUCER", "legacy", "5", attrs={"messaging.system": "kafka", "messaging.destination": "o"}),
           span("orders process", "CONSUMER", "legacy", "6", attrs={"messaging.system": "kafka",
                                                                    "messaging.destination": "o",
                                                                    "messaging.operation": "process"}),
           span("SELECT", "CLIENT", "legacy", "7", attrs={"db.system": "postgresql", "db.statement": "SELECT 1"})]
    assert check_semantic_conventions(spans + old, required=[Sel(kind="SERVER")]).passed
    bad = [span("send", "INTERNAL", "svc", "1", attrs=SEND),  # a send must be PRODUCER
           span("process", "SERVER", "svc", "2", attrs=PROCESS),  # processing is CONSUMER, not SERVER
           span("GET /", "SERVER", "svc", "3", attrs={"http.request.method": "GET"}),
           span("recv", "CONSUMER", "svc", "4", attrs={"messaging.system": "kafka"}),
           span("query", "INTERNAL", "svc", "5", attrs={"db.statement": "SELECT 1"})]
    result = check_semantic_conventions(bad)
    assert not result.passed and result.message.startswith("0 of 5 spans")
    text = "\n".join(result.evidence)
    for expected in ("kind INTERNAL for messaging operation 'send'", "kind SERVER for messaging operation 'process'",
                     "no http.response.status_code", "no url.path or http.route", "no messaging.destination.name",
                     "no messaging.operation.type", "no db.system.name (or db.system)",
                     "kind INTERNAL for a database call"):
        assert expected in text, (expected, text)
    missing = check_semantic_conventions(spans, required=[Sel(service="read_model", kind="SERVER")])
    assert not missing.passed and "no span[service='read_model' kind=SERVER] at all" in missing.evidence[0]
    assert not check_semantic_conventions([]).passed


def test_redelivery_shows_every_processing():
    s, p, c = good_trace()
    again = span(c.name, "CONSUMER", "read_model", "4", trace=T3, start=60, end=70, attrs=PROCESS, links=(link(T1, p.span_id),))
    assert check_redelivery([s, p, c, again], [Redelivery("order o-1", T1)]).passed
    result = check_redelivery([s, p, c], [Redelivery("order o-1", T1)])
    assert not result.passed and "1 span[kind=CONSUMER], expected at least 2" in result.evidence[0]


def test_error_status_on_failed_operations():
    s, p, c = good_trace()
    failed_server = span(s.name, "SERVER", s.service, "5", CLIENT, trace=T2, attrs={**HTTP, "http.response.status_code": 503},
                         status="ERROR", message="broker unavailable")
    failures = [ExpectedError("order o-2 (503)", T2, Sel(service="order_api", kind="SERVER"))]
    assert check_error_status([s, p, c, failed_server], failures).passed
    unset = span(s.name, "SERVER", s.service, "5", CLIENT, trace=T2, attrs=HTTP)
    result = check_error_status([unset], failures)
    assert not result.passed and "has status UNSET, expected ERROR" in result.evidence[0]
    assert not check_error_status([], failures).passed


def test_no_secret_anywhere_in_a_span():
    secret = "tok-4f9a2c"
    clean = good_trace()
    assert check_no_secret_leaks(clean, [secret]).passed
    leaks = [span("a", "SERVER", "svc", "1", attrs={"http.request.header.authorization": [f"Bearer {secret}"]}),
             span("b", "INTERNAL", "svc", "2", events=({"name": "log", "attributes": {"body": {"x": secret}}, "t": B},)),
             span("c", "CONSUMER", "svc", "3", links=(link(T1, "1", note=f"x{secret}y"),)),
             span("d", "INTERNAL", "svc", "4", status="ERROR", message=f"bad token {secret}"),
             span(f"e {secret}", "INTERNAL", "svc", "5")]
    result = check_no_secret_leaks(clean + leaks, [secret])
    assert not result.passed and len(result.evidence) == 5
    assert all(secret not in e for e in result.evidence)  # evidence masks the secret itself
    assert "attributes.http.request.header.authorization[0]" in result.evidence[0]
    assert not check_no_secret_leaks([], [secret]).passed  # nothing exported proves nothing


def test_spans_after_shutdown_and_combine():
    spans = good_trace()
    expected = [Sel(service="order_api", kind="SERVER"), Sel(service="order_api", kind="PRODUCER")]
    passed = check_spans_after_shutdown(spans, [op()], expected)
    failed = check_spans_after_shutdown(spans[2:], [op()], expected)
    assert passed.passed and not failed.passed
    skipped = check_redelivery(spans, [])
    combined = combine("traces", "Traces", 2, [passed, failed, skipped])
    assert not combined.passed and combined.points == 0 and "not judged" in combined.message
    assert combined.evidence[0].startswith("[Spans survive a clean shutdown] order o-1")
    assert combine("traces", "Traces", 2, [passed, skipped]).passed
    assert combine("traces", "Traces", 2, [skipped]).skipped


def test_traceparent_helpers():
    tp = new_traceparent(random.Random(7))
    assert tp == new_traceparent(random.Random(7)) and parse_traceparent(tp.header) == tp
    assert parse_traceparent("00-" + "0" * 32 + "-" + "1" * 16 + "-01") is None
    assert parse_traceparent(None) is None and parse_traceparent("garbage") is None


def test_waterfall():
    spans = good_trace(by_link=True)
    s, p, c = spans
    spans[2] = span(c.name, c.kind, c.service, c.span_id, trace=c.trace_id, start=40, end=50, attrs=PROCESS,
                    links=c.links, status="ERROR", message="dead-lettered")
    fault = (ms(35), ms(45), "kill read_model")
    text = trace_text(spans, T1, [fault])
    lines = text.splitlines()
    assert lines[0].startswith(f"trace {T1} · 3 spans · 50.0ms · order_api, read_model · 1 linked trace")
    assert "⚡ kill read_model +35.0ms … +45.0ms" in lines[1]
    assert "order_api SERVER POST /orders" in lines[2] and "+5.0ms" in lines[3]
    assert "↪ link (trace" in lines[4] and "ERROR: dead-lettered" in lines[4] and "⚡ kill read_model" in lines[4]
    assert lines[2].index("order_api") < lines[3].index("order_api") < lines[4].index("read_model")  # indentation
    assert "no spans received" in trace_text(spans, T2)
    console = Console(record=True, width=200)
    console.print(render_trace(spans, T1, [fault]))
    assert "█" in console.export_text()  # the timeline bar
    assert "… 2 more spans" in trace_text(spans, T1, max_spans=1)


def test_faults_from_the_history_clock_to_the_span_clock():
    summaries = [{"fault": "kill", "target": "read_model", "start": 2.0, "end": 2.5, "description": None},
                 {"fault": "cut", "target": "kafka", "start": None, "end": None, "reason": "no proxy"}]
    assert faults_in_span_clock(summaries, wall_t0_ns=B) == [(B + 2 * 10**9, B + 2_500_000_000, "kill read_model")]


# --- real services ----------------------------------------------------------------------------

LAB = find_lab("lab-1")
MUTANTS = Path(__file__).parent / "mutants" / "lab1"
SECRET = f"labkit-secret-{random.Random(11).getrandbits(64):016x}"
ORDERS = 3

# submission -> the trace checks it must fail (all others must pass)
EXPECTED_FAILURES = {
    "reference": set(),
    "trace_context_not_injected": {"connected", "headers"},
    "consumer_span_unlinked": {"connected", "errors"},
    "wrong_span_kinds": {"connected", "headers", "semconv"},
    "secret_in_span": {"secrets"},
    "spans_lost_on_shutdown": {"shutdown"},
}


@pytest.fixture(scope="module")
def stack():
    with make_stack(["kafka", "postgres"], "native") as stack:
        yield stack


@dataclass
class TracedRun:
    receiver: OtlpReceiver
    operations: list[Operation] = field(default_factory=list)
    shutdown_operations: list[Operation] = field(default_factory=list)
    poison: list[ExpectedError] = field(default_factory=list)
    records: list[RecordHeader] = field(default_factory=list)


def place_orders(service: Service, n: int, rng: random.Random) -> list[Operation]:
    """POST n orders, each with the grader's own traceparent and the seeded secret as a bearer token."""
    ops = []
    with httpx.Client(base_url=service.base_url, timeout=30) as client:
        for _ in range(n):
            tp = new_traceparent(rng)
            r = client.post("/orders", json={"customer_id": f"c-{rng.getrandbits(32):x}", "amount_cents": 500},
                            headers={"Idempotency-Key": str(uuid.UUID(int=rng.getrandbits(128))),
                                     "traceparent": tp.header, "Authorization": f"Bearer {SECRET}"})
            assert r.status_code == 201, r.text
            ops.append(Operation(f"order {r.json()['order_id']}", tp.trace_id, tp.span_id))
    return ops


def run_traced(stack, submission: Path, tmp_path: Path, shutdown_phase: bool) -> TracedRun:
    """Both services exporting to a fresh receiver: orders, a poison record, then (shutdown_phase)
    order_api restarted with a 60 s batch delay, two orders, SIGTERM: only a flush delivers them."""
    rng = random.Random(5)
    run = TracedRun(OtlpReceiver(History(), grpc=False).start())
    ns = stack.namespace(prefix="traces")
    bootstrap = stack.env()["KAFKA_BOOTSTRAP_SERVERS"]
    topic = ns.topic("orders")
    ensure_topics(bootstrap, {topic: 3, ns.topic("orders.dlq"): 1})
    env = {**ns.env(), **run.receiver.env()}
    services = {name: Service(spec, submission, env, tmp_path / "logs") for name, spec in LAB.services.items()}
    (tmp_path / "logs").mkdir()
    try:
        for service in services.values():
            service.start()
        api, read_model = services["order_api"], services["read_model"]
        api.wait_healthy()
        run.operations = place_orders(api, ORDERS, rng)
        tp = new_traceparent(rng)  # a record the read model must dead-letter, in a trace of the grader's
        producer = Producer({"bootstrap.servers": bootstrap, **QUIET})
        producer.produce(topic, key=b"poison", value=b"{not json", headers=[("traceparent", tp.header.encode())])
        assert producer.flush(10) == 0
        run.poison = [ExpectedError("poison record", tp.trace_id, Sel(service="read_model"))]
        wait_until(lambda: group_lag(bootstrap, ns.group("read-model"), topic) == 0, 30, "the read model to catch up",
                   interval=0.2)
        # completeness without assuming the spans are well formed (mutants break exactly that): the
        # records were processed, so wait until each service exported a span per operation it served
        spans_of = lambda svc: [s for s in run.receiver.spans() if s.service == svc]  # noqa: E731
        wait_until(lambda: len(spans_of("order_api")) >= 2 * ORDERS and len(spans_of("read_model")) >= ORDERS + 1,
                   20, "the services' spans")
        by_order = {o.label.removeprefix("order "): o for o in run.operations}
        run.records = [RecordHeader(f"{topic}[{m.partition()}]@{m.offset()}", dict(m.headers() or []).get("traceparent"),
                                    by_order[m.key().decode()].trace_id)
                       for m in read_all(bootstrap, topic) if m.key() != b"poison"]
        assert len(run.records) == ORDERS
        if not shutdown_phase:
            return run
        api.stop()
        api.start(extra_env=run.receiver.env(schedule_delay_ms=60_000))
        api.wait_healthy()
        run.shutdown_operations = place_orders(api, 2, rng)
        api.stop()
        assert api.exit_code() == 0, api.log_tail()
        wait_for_traces(run.receiver, {o.trace_id: [Sel(service="order_api")] for o in run.shutdown_operations}, 2)
    finally:
        for service in services.values():
            service.stop()
        run.receiver.stop()
    return run


def judge(run: TracedRun) -> dict[str, CheckResult]:
    spans = run.receiver.spans()
    return {
        "connected": check_connected_traces(spans, run.operations, CHAIN),
        "headers": check_trace_headers(spans, run.records),
        "semconv": check_semantic_conventions(spans, required=CHAIN),
        "errors": check_error_status(spans, run.poison),
        "secrets": check_no_secret_leaks(spans, [SECRET]),
    } | ({} if not run.shutdown_operations else {  # kind-agnostic selectors here and for the errors:
        "shutdown": check_spans_after_shutdown(spans, run.shutdown_operations, [Sel(service="order_api")]),
    })  # those checks judge delivery and status; the kinds are judged by "semconv"


@pytest.mark.parametrize("name", list(EXPECTED_FAILURES))
def test_real_services(stack, tmp_path, name):
    submission = LAB.reference if name == "reference" else MUTANTS / name
    run = run_traced(stack, submission, tmp_path, shutdown_phase=name in ("reference", "spans_lost_on_shutdown"))
    results = judge(run)
    failed = {key for key, r in results.items() if not r.passed}
    report = "\n".join(f"{key}: {'PASS' if r.passed else 'FAIL'} {r.message}\n" + "\n".join(r.evidence[:2])
                       for key, r in results.items())
    assert failed == EXPECTED_FAILURES[name], report
    if name == "reference":  # the completeness rule itself, on real spans: the whole chain arrived
        done = wait_for_traces(run.receiver, [Expectation(o.trace_id, tuple(CHAIN), o.label) for o in run.operations], 1)
        assert done.complete, done.missing
        excerpt = trace_text(run.receiver.spans(), run.operations[0].trace_id)
        assert [line.split()[3:6] for line in excerpt.splitlines()[1:]] == [
            ["order_api", "SERVER", "POST"], ["order_api", "PRODUCER", "send"], ["read_model", "CONSUMER", "process"]], excerpt
