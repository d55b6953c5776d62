"""Lab 1's reference services against a real native stack (Tansu + PostgreSQL, no mocks).

The API contract (400 / 422 / replay / 409 / 404 / 503), orders and cancels flowing into the read
model, duplicates applied once, a late OrderPlaced not undoing a cancel, malformed records in the
dead-letter topic; and every submission dir (reference, starter, mutants) starts, answers health
and exits 0 on SIGTERM. Services run as subprocesses with the env contract, stopped by PID.
"""
from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psycopg
import pytest
from confluent_kafka import Consumer, Producer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from grader.nemesis.duplicates import read_all
from grader.kafka import CLIENT_DEFAULTS, QUIET, ensure_topics, group_lag
from grader.lab import find_lab
from grader.launch import Service, launch_services
from grader.runner import Run, prepare
from grader.wait import wait_until

LAB = find_lab("lab-1")
MUTANTS = Path(__file__).parent / "mutants" / "lab1"
SUBMISSIONS = [LAB.reference, LAB.starter] + sorted(p.parent for p in MUTANTS.glob("*/mutant.toml"))
PUBLISH_TIMEOUT_MS = 2000


class SpanSink(ThreadingHTTPServer):
    """The smallest OTLP/HTTP (protobuf) trace receiver: keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, object]] = []  # (service.name, Span)
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                request = ExportTraceServiceRequest.FromString(self.rfile.read(int(self.headers["Content-Length"])))
                for resource_spans in request.resource_spans:
                    service = next(a.value.string_value for a in resource_spans.resource.attributes
                                   if a.key == "service.name")
                    sink.spans += [(service, span) for scope in resource_spans.scope_spans for span in scope.spans]
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture(scope="module")
def spans():
    sink = SpanSink()
    yield sink
    sink.shutdown()


@pytest.fixture(scope="module")
def run(tmp_path_factory, spans) -> Run:
    """The stack (Kafka behind a fault proxy), topics, and the reference services, running."""
    with ExitStack() as resources:
        run = prepare(LAB, LAB.reference, "native", seed=0, out_dir=tmp_path_factory.mktemp("lab1"),
                      resources=resources)
        run.services["order_api"].env["ORDER_API_PUBLISH_TIMEOUT_MS"] = str(PUBLISH_TIMEOUT_MS)
        for service in run.services.values():
            service.env.update(OTEL_EXPORTER_OTLP_ENDPOINT=spans.endpoint, OTEL_BSP_SCHEDULE_DELAY="200")
        for service in run.services.values():
            service.start()
        run.services["order_api"].wait_healthy()
        wait_until(lambda: group_lag(run.kafka, run.ns.group("read-model"), run.ns.topic("orders")) == 0 and
                   run.services["read_model"].log.read_text().count("assigned"), 30, "the read model to join its group")
        yield run
        # resources stop every service (SIGTERM, then SIGKILL by PID), the proxy and the stack


@pytest.fixture()
def api(run):
    with httpx.Client(base_url=run.services["order_api"].base_url, timeout=30) as client:
        yield client


def post(api: httpx.Client, path: str, body=None, key: str | None = "new", raw: bytes | None = None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Idempotency-Key"] = str(uuid.uuid4()) if key == "new" else key
    return api.post(path, content=raw if raw is not None else json.dumps(body).encode(), headers=headers)


def json_error(r: httpx.Response) -> dict:
    assert r.headers["content-type"].startswith("application/json"), r.text
    body = r.json()
    assert isinstance(body.get("error"), str), body
    return body


def db(run: Run, sql: str, *params):
    with psycopg.connect(run.ns.service_url("postgres"), connect_timeout=5) as conn:
        return conn.execute(sql, params).fetchall()


def order_row(run: Run, order_id: str):
    rows = db(run, "SELECT customer_id, amount_cents, status FROM orders WHERE order_id = %s", order_id)
    return rows[0] if rows else None


def totals(run: Run, customer: str):
    rows = db(run, "SELECT order_count, total_cents FROM customer_totals WHERE customer_id = %s", customer)
    return rows[0] if rows else (0, 0)


def wait_row(run: Run, order_id: str, status: str):
    return wait_until(lambda: (row := order_row(run, order_id)) and row[2] == status and row, 30,
                      f"order {order_id} {status} in the read model", ignore=(psycopg.Error,))


def caught_up(run: Run) -> None:
    """Every record in the topic is committed by the read model (so it was processed)."""
    wait_until(lambda: group_lag(run.kafka, run.ns.group("read-model"), run.ns.topic("orders")) == 0, 30,
               "read-model lag 0")


def customer() -> str:
    return f"c-{uuid.uuid4().hex[:12]}"


def produce(run: Run, records: list[tuple[bytes | None, bytes, list | None]], topic: str = "orders") -> None:
    producer = Producer({"bootstrap.servers": run.kafka, **QUIET})
    for key, value, headers in records:
        producer.produce(run.ns.topic(topic), key=key, value=value, headers=headers)
    assert producer.flush(15) == 0


def event(type_: str, order_id: str, customer_id: str, amount: int) -> dict:
    return {"event_id": str(uuid.uuid4()), "type": type_, "order_id": order_id, "customer_id": customer_id,
            "amount_cents": amount, "occurred_at": "2026-01-01T00:00:00+00:00"}


def as_record(e: dict) -> tuple[bytes, bytes, list]:
    return e["order_id"].encode(), json.dumps(e).encode(), [("event_id", e["event_id"].encode())]


# --- the API contract --------------------------------------------------------------------------

def test_health(api):
    r = api.get("/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})


def test_post_without_idempotency_key_is_400(api):
    r = post(api, "/orders", {"customer_id": customer(), "amount_cents": 100}, key=None)
    assert r.status_code == 400
    assert json_error(r)["error"] == "idempotency_key_missing"
    assert post(api, "/orders/x/cancel", {}, key=None).status_code == 400


@pytest.mark.parametrize("raw, status", [
    (b'{"customer_id": "c-1", "amount_cents": ', 400),          # not JSON
    (b"\xff\xfe not utf-8", 400),
    (b"", 400),
    (b'[1, 2]', 422),                                            # JSON, not an object
    (b'{"customer_id": "", "amount_cents": 100}', 422),
    (b'{"customer_id": "c-1", "amount_cents": -5}', 422),
    (b'{"customer_id": "c-1", "amount_cents": 1000000001}', 422),
    (b'{"customer_id": "c-1", "amount_cents": "100"}', 422),
    (b'{"customer_id": "c-1", "amount_cents": 1.5}', 422),
    (b'{"customer_id": "c-1"}', 422),
    (b'{"customer_id": "c-1", "amount_cents": 100, "extra": true}', 422),
    (b'{"customer_id": "' + b"x" * 65 + b'", "amount_cents": 100}', 422),
    (b'{"customer_id": "a\\u0000b", "amount_cents": 100}', 422),    # PostgreSQL text cannot hold NUL
])
def test_bad_input_is_a_4xx_with_a_json_error(api, raw, status):
    r = post(api, "/orders", raw=raw)
    assert r.status_code == status, r.text
    json_error(r)


def test_bad_cancel_body_is_a_4xx(api):
    r = post(api, f"/orders/{uuid.uuid4()}/cancel", raw=b"{not json")
    assert r.status_code == 400
    json_error(r)


def test_new_order_is_201(api):
    c = customer()
    r = post(api, "/orders", {"customer_id": c, "amount_cents": 1234})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body == {"order_id": body["order_id"], "customer_id": c, "amount_cents": 1234, "status": "placed"}
    assert "idempotent-replayed" not in r.headers


def test_retry_with_same_key_replays_the_first_response_byte_for_byte(api):
    key, body = str(uuid.uuid4()), {"customer_id": customer(), "amount_cents": 500}
    first = post(api, "/orders", body, key=key)
    again = post(api, "/orders", body, key=key)
    assert first.status_code == again.status_code == 201
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"


def test_same_key_different_request_is_422(api):
    key, c = str(uuid.uuid4()), customer()
    assert post(api, "/orders", {"customer_id": c, "amount_cents": 500}, key=key).status_code == 201
    r = post(api, "/orders", {"customer_id": c, "amount_cents": 501}, key=key)
    assert r.status_code == 422
    assert json_error(r)["error"] == "idempotency_key_reused"
    r = post(api, f"/orders/{uuid.uuid4()}/cancel", {}, key=key)  # another path is another request too
    assert r.status_code == 422


def test_same_key_while_the_first_is_in_progress_is_409(run, api):
    """The broker is slow, so the first request is still waiting for its acknowledgement."""
    key, body = str(uuid.uuid4()), {"customer_id": customer(), "amount_cents": 700}
    run.proxies["kafka"].delay(500)  # each way: the acknowledgement takes ~1 s, within the 2 s publish timeout
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(post, api, "/orders", body, key)
            wait_until(lambda: db(run, "SELECT 1 FROM idempotency_keys WHERE key = %s", key), 10,
                       "the first request to claim its key")
            second = post(api, "/orders", body, key=key)
            first = first.result()
    finally:
        run.proxies["kafka"].delay(0)
    assert (first.status_code, second.status_code) == (201, 409), (first.text, second.text)
    assert json_error(second)["error"] == "request_in_progress"
    again = post(api, "/orders", body, key=key)  # once finished, the same key replays
    assert (again.status_code, again.content) == (201, first.content)


def test_cancel_of_an_unknown_order_is_404(api):
    key = str(uuid.uuid4())
    r = post(api, f"/orders/{uuid.uuid4()}/cancel", {}, key=key)
    assert r.status_code == 404
    assert json_error(r)["error"] == "order_not_found"
    assert post(api, "/orders/%00/cancel", {}).status_code == 404


# --- events into the read model ----------------------------------------------------------------

def test_an_order_reaches_orders_and_customer_totals(run, api):
    c = customer()
    first = post(api, "/orders", {"customer_id": c, "amount_cents": 1000}).json()
    second = post(api, "/orders", {"customer_id": c, "amount_cents": 250}).json()
    assert wait_row(run, first["order_id"], "placed") == (c, 1000, "placed")
    wait_row(run, second["order_id"], "placed")
    assert totals(run, c) == (2, 1250)


def test_the_event_on_the_wire(run, api):
    c = customer()
    order_id = post(api, "/orders", {"customer_id": c, "amount_cents": 42}).json()["order_id"]
    [msg] = [m for m in read_all(run.kafka, run.ns.topic("orders")) if m.key() == order_id.encode()]
    value = json.loads(msg.value())
    assert value["type"] == "OrderPlaced" and value["customer_id"] == c and value["amount_cents"] == 42
    assert set(value) == {"event_id", "type", "order_id", "customer_id", "amount_cents", "occurred_at"}
    headers = dict(msg.headers())
    assert headers["event_id"].decode() == value["event_id"] and headers["type"] == b"OrderPlaced"


def test_a_cancel_flows_and_leaves_the_totals(run, api):
    c = customer()
    keep = post(api, "/orders", {"customer_id": c, "amount_cents": 300}).json()["order_id"]
    gone = post(api, "/orders", {"customer_id": c, "amount_cents": 900}).json()["order_id"]
    key = str(uuid.uuid4())
    r = post(api, f"/orders/{gone}/cancel", raw=b"", key=key)  # an empty body is fine
    assert (r.status_code, r.json()) == (200, {"order_id": gone, "status": "cancelled"})
    assert post(api, f"/orders/{gone}/cancel", raw=b"", key=key).headers["idempotent-replayed"] == "true"
    wait_row(run, gone, "cancelled")
    wait_row(run, keep, "placed")
    assert totals(run, c) == (1, 300)


def test_a_redelivered_event_does_not_count_twice(run, api):
    c = customer()
    order_id = post(api, "/orders", {"customer_id": c, "amount_cents": 800}).json()["order_id"]
    wait_row(run, order_id, "placed")
    [original] = [m for m in read_all(run.kafka, run.ns.topic("orders")) if m.key() == order_id.encode()]
    producer = Producer({"bootstrap.servers": run.kafka, **QUIET})
    for _ in range(2):  # the very same record again, on its partition, as a redelivery would be
        producer.produce(original.topic(), key=original.key(), value=original.value(),
                         headers=original.headers(), partition=original.partition())
    assert producer.flush(15) == 0
    caught_up(run)
    assert totals(run, c) == (1, 800)


def test_a_duplicate_event_id_is_applied_once(run):
    c = customer()
    e = event("OrderPlaced", str(uuid.uuid4()), c, 600)
    produce(run, [as_record(e), as_record(e)])
    wait_row(run, e["order_id"], "placed")
    caught_up(run)
    assert totals(run, c) == (1, 600)


def test_a_cancel_before_its_order_is_a_tombstone(run):
    """A late OrderPlaced must not bring back an order that was cancelled."""
    c, order_id = customer(), str(uuid.uuid4())
    produce(run, [as_record(event("OrderCancelled", order_id, c, 400)), as_record(event("OrderPlaced", order_id, c, 400))])
    caught_up(run)
    assert order_row(run, order_id) == (c, 0, "cancelled")
    assert totals(run, c) == (0, 0)


def test_malformed_records_go_to_the_dlq_and_the_consumer_keeps_going(run):
    c = customer()
    bad = [(b"p-1", b"this is not JSON", None),
           (b"p-2", json.dumps({"type": "OrderPlaced", "event_id": str(uuid.uuid4())}).encode(), None),
           (b"p-3", json.dumps({**event("OrderShipped", "o", c, 1)}).encode(), None),
           (b"p-4", json.dumps(event("OrderPlaced", "o", c, -3)).encode(), None)]
    good = event("OrderPlaced", str(uuid.uuid4()), c, 100)
    produce(run, bad + [as_record(good)])
    wait_row(run, good["order_id"], "placed")
    assert run.services["read_model"].alive()

    consumer = Consumer({"bootstrap.servers": run.kafka, "group.id": f"test-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", **CLIENT_DEFAULTS})
    dead: dict[bytes, dict] = {}
    try:
        consumer.subscribe([run.ns.topic("orders.dlq")])

        def all_dead() -> bool:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                dead[msg.key()] = {k: v.decode() for k, v in msg.headers() or []}
            return {b"p-1", b"p-2", b"p-3", b"p-4"} <= set(dead)

        wait_until(all_dead, 30, "the malformed records in the DLQ", interval=0)
    finally:
        consumer.close()
    assert "not JSON" in dead[b"p-1"]["error"]
    assert "missing fields" in dead[b"p-2"]["error"]
    assert "OrderShipped" in dead[b"p-3"]["error"]
    assert "amount_cents" in dead[b"p-4"]["error"]
    caught_up(run)  # their offsets were committed


def test_broker_unavailable_is_503_and_a_retry_with_the_key_places_one_order(run, api):
    c = customer()
    key, body = str(uuid.uuid4()), {"customer_id": c, "amount_cents": 5000}
    run.proxies["kafka"].cut()
    try:
        r = post(api, "/orders", body, key=key)
    finally:
        run.proxies["kafka"].heal()
    assert r.status_code == 503
    assert json_error(r)["error"] == "broker_unavailable"
    retried = wait_until(lambda: (r := post(api, "/orders", body, key=key)).status_code == 201 and r, 60,
                         "a retry with the same key to succeed after the heal")
    wait_row(run, retried.json()["order_id"], "placed")
    caught_up(run)
    assert totals(run, c) == (1, 5000)


def test_one_trace_from_the_request_to_the_read_model(run, api, spans):
    """SERVER span (order_api) -> PRODUCER span -> CONSUMER span (read_model), over OTLP/HTTP."""
    order_id = post(api, "/orders", {"customer_id": customer(), "amount_cents": 77}).json()["order_id"]
    wait_row(run, order_id, "placed")

    def trace_of_order():
        producer = [s for _, s in spans.spans if s.kind == Span.SPAN_KIND_PRODUCER and any(
            a.key == "messaging.kafka.message.key" and a.value.string_value == order_id for a in s.attributes)]
        if not producer:
            return None
        in_trace = [(svc, s) for svc, s in spans.spans if s.trace_id == producer[0].trace_id]
        kinds = {(svc, s.kind) for svc, s in in_trace}
        return in_trace if {("order_api", Span.SPAN_KIND_SERVER), ("read_model", Span.SPAN_KIND_CONSUMER)} <= kinds else None

    in_trace = wait_until(trace_of_order, 20, f"the spans of order {order_id}")
    by_kind = {s.kind: s for _, s in in_trace}
    server, producer, consumer = (by_kind[k] for k in (Span.SPAN_KIND_SERVER, Span.SPAN_KIND_PRODUCER,
                                                       Span.SPAN_KIND_CONSUMER))
    assert producer.parent_span_id == server.span_id
    assert consumer.parent_span_id == producer.span_id


# --- every submission dir starts ---------------------------------------------------------------

def submission_id(path: Path) -> str:
    return {LAB.reference: "reference", LAB.starter: "starter"}.get(path, path.name)


@pytest.mark.parametrize("submission", SUBMISSIONS, ids=submission_id)
def test_submission_starts_and_stops_cleanly(run, tmp_path, submission):
    """Both packages import, the API answers health, the read model creates its tables; SIGTERM -> 0."""
    ns = run.stack.namespace(prefix="lab1smoke")
    env = {**ns.env(), "KAFKA_BOOTSTRAP_SERVERS": run.kafka}
    ensure_topics(run.kafka, {ns.topic(t.name): t.partitions for t in LAB.topics})
    services: dict[str, Service] = launch_services(LAB.services, submission, env, tmp_path)
    try:
        for service in services.values():
            service.start()
        services["order_api"].wait_healthy()
        with psycopg.connect(ns.service_url("postgres"), connect_timeout=5) as conn:
            wait_until(lambda: conn.execute("SELECT to_regclass('customer_totals')").fetchone()[0], 30,
                       "the read model's tables")
        services["read_model"].check_alive()
        for name, service in services.items():
            service.stop()
            assert service.exit_code() == 0, f"{name} exited {service.exit_code()} on SIGTERM:\n{service.log_tail()}"
    finally:
        for service in services.values():
            service.stop()
        ns.drop()
