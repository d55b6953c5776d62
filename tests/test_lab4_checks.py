"""Lab 4's checkers on hand-made histories (no servers): what each one passes and fails."""
from __future__ import annotations

from grader.checks.payments import (CHARGES, check_heartbeats, check_no_double_charge, check_no_lost_payment,
                                    check_poison_to_dlq, check_prefetch, check_retry_backoff)
from grader.history import History
from grader.observe.amqp import BROKER_LOG, CHANNELS, CONNECTIONS, CONSUMERS, DLQ
from grader.workloads.gateway import CALL
from grader.workloads.payments import PLAN

ARGS = {"id": "x", "title": "x", "max_points": 1, "hint": "h"}
WORK = "ns.payments.work"


def pay(h: History, payment_id: str, status: int = 202, amount: int = 100) -> None:
    n = h.invoke("client", "pay", key=f"k-{payment_id}", payment_id=payment_id,
                 body={"payment_id": payment_id, "account": "a", "amount_cents": amount})
    h.complete(n, "ok" if status < 300 else "info", "client", "pay", status=status, body={})


def call(h: History, payment_id: str, n: int, status: int, t0: float, t1: float) -> None:
    h.observe(CALL, payment_id=payment_id, n=n, status=status, t_start=t0, t_end=t1, key=payment_id)


def test_double_charge_and_lost_payment_from_rows():
    h = History()
    for p in ("a", "b", "c"):
        pay(h, p)
    h.observe(CHARGES, rows=[["a", 100], ["a", 100], ["b", 100]])
    double = check_no_double_charge(h, **ARGS)
    assert not double.passed and "payment a charged 2 times" in double.evidence[0]
    lost = check_no_lost_payment(h, **ARGS)
    assert not lost.passed and lost.evidence[0].startswith("c:")


def test_retry_backoff_measures_gaps_from_the_gateways_clock():
    h = History()
    h.observe(PLAN, payment_id="r", fail_first=2, poison=False, slow=0.0)
    pay(h, "r")
    call(h, "r", 1, 503, 1.0, 1.1)
    call(h, "r", 2, 503, 1.2, 1.3)  # 0.1 s later: no back-off
    call(h, "r", 3, 200, 3.5, 3.6)
    h.observe(CHARGES, rows=[["r", 100]])
    result = check_retry_backoff((1.0, 2.0, 4.0))(h, **ARGS)
    assert not result.passed and "attempt 2 came 0.10 s" in result.evidence[0]
    h2 = History()
    h2.observe(PLAN, payment_id="r", fail_first=2, poison=False, slow=0.0)
    pay(h2, "r")
    call(h2, "r", 1, 503, 1.0, 1.1)
    call(h2, "r", 2, 503, 2.2, 2.3)
    call(h2, "r", 3, 200, 4.4, 4.5)
    h2.observe(CHARGES, rows=[["r", 100]])
    assert check_retry_backoff((1.0, 2.0, 4.0))(h2, **ARGS).passed


def test_poison_must_be_rejected_into_the_dlq_within_the_attempts():
    h = History()
    h.record("note", "grader", message="work queue", work_queue=WORK)
    h.observe(PLAN, payment_id="x", poison=True, fail_first=0, slow=0.0)
    pay(h, "x")
    pay(h, "ok")
    for i in range(6):
        call(h, "x", i + 1, 422, 1.0 + i / 10, 1.05 + i / 10)
    call(h, "ok", 1, 200, 2.0, 2.1)
    h.observe(CHARGES, rows=[["ok", 100]])
    h.observe(DLQ, queue="ns.payments.dead", messages=[
        {"payment_id": "x", "headers": {"x-death": [{"reason": "delivery_limit", "queue": WORK, "count": 1}]}}])
    result = check_poison_to_dlq(4, lambda _: WORK)(h, **ARGS)
    assert not result.passed
    assert any("6 attempts" in e for e in result.evidence) and any("delivery_limit" in e for e in result.evidence)


def test_prefetch_and_auto_ack_from_the_brokers_view():
    h = History()
    h.record("note", "grader", message="work queue", work_queue=WORK)
    h.observe(CONSUMERS, consumers=[{"queue": WORK, "channel": "<c1>", "ack_required": False, "prefetch": 0}])
    h.observe(CHANNELS, channels=[{"pid": "<c1>", "prefetch": 0, "unacked": 0, "consumers": 1}])
    result = check_prefetch(8, lambda _: WORK)(h, **ARGS)
    assert not result.passed and "automatic acks" in result.evidence[0] and "no prefetch bound" in result.evidence[1]


def test_heartbeats_fail_on_a_connection_closed_during_a_long_job():
    h = History()
    h.observe(PLAN, payment_id="long", slow=8.0, poison=False, fail_first=0)
    pay(h, "long")
    call(h, "long", 1, 200, 10.0, 18.0)
    h.observe(CHARGES, rows=[["long", 100]])
    h.observe(CHANNELS, channels=[{"pid": "<rabbit@h.17.9.0>", "connection": "<rabbit@h.17.5.0>", "prefetch": 8,
                                   "unacked": 1, "consumers": 1},
                                  {"pid": "<rabbit@h.17.8.0>", "connection": "<rabbit@h.17.6.0>", "prefetch": 0,
                                   "unacked": 0, "consumers": 0}])
    # The publisher's idle connection (no consumer) missing its heartbeats is not the long job's.
    h.observe(BROKER_LOG, lines=["2026-01-01 00:00:14.0+00:00 [error] <0.6.0> missed heartbeats from client"], at=[14.0])
    assert check_heartbeats(2)(h, **ARGS).passed
    h.observe(BROKER_LOG, lines=["2026-01-01 00:00:14.0+00:00 [error] <0.5.0> missed heartbeats from client"], at=[14.0])
    result = check_heartbeats(2)(h, **ARGS)
    assert not result.passed and "missed heartbeats" in result.evidence[0]
    h.observe(BROKER_LOG, lines=[], at=[])
    assert check_heartbeats(2)(h, **ARGS).passed


def test_double_charge_by_the_gateways_record_whatever_the_keys():
    """Two approvals of one payment with different keys are two charges of the card, though the
    worker's table has one row."""
    h = History()
    pay(h, "a")
    h.observe(CALL, payment_id="a", n=1, status=200, t_start=1.0, t_end=1.1, key="k1", charge_id="ch_a_1",
              replayed=False)
    h.observe(CALL, payment_id="a", n=2, status=200, t_start=3.0, t_end=3.1, key="k2", charge_id="ch_a_2",
              replayed=False)
    h.observe(CHARGES, rows=[["a", 100]])
    result = check_no_double_charge(h, **ARGS)
    assert not result.passed and "charged 2 times by the gateway" in result.evidence[0]


def test_no_double_charge_needs_a_redelivery_of_a_charged_payment():
    """A worker that never saw a charged payment again (auto-ack: nothing is redelivered) is not
    judged; one whose gateway call was repeated after the approval, with the same key, passes."""
    h = History()
    pay(h, "a")
    h.observe(CALL, payment_id="a", n=1, status=200, t_start=1.0, t_end=1.1, key="a", charge_id="ch_a_1",
              replayed=False)
    h.observe(CHARGES, rows=[["a", 100]])
    result = check_no_double_charge(h, **ARGS)
    assert result.skipped and "never" in result.message and not result.points
    h.observe(CALL, payment_id="a", n=2, status=200, t_start=3.0, t_end=3.1, key="a", charge_id="ch_a_1",
              replayed=True)
    assert check_no_double_charge(h, **ARGS).passed


def test_a_permanent_error_is_called_once_and_rejected_on_its_first_delivery():
    h = History()
    h.record("note", "grader", message="work queue", work_queue=WORK)
    h.observe(PLAN, payment_id="x", poison=True, fail_first=0, slow=0.0)
    pay(h, "x")
    pay(h, "ok")
    for i, t in enumerate((1.0, 2.1, 4.2, 8.3)):  # retried like an outage: 1 s, 2 s, 4 s
        call(h, "x", i + 1, 422, t, t + 0.05)
    call(h, "ok", 1, 200, 2.0, 2.1)
    h.observe(CHARGES, rows=[["ok", 100]])
    h.observe(DLQ, queue="ns.payments.dead", messages=[{"payment_id": "x", "headers": {"x-death": [
        {"reason": "rejected", "queue": WORK, "count": 1},
        {"reason": "expired", "queue": "ns.payments.retry.1", "count": 1}]}}])
    result = check_poison_to_dlq(4, lambda _: WORK)(h, **ARGS)
    assert not result.passed
    assert any("called again 3 time(s)" in e for e in result.evidence)
    assert any("died more than once" in e for e in result.evidence)


def test_prefetch_judges_the_consumers_own_bound():
    """basic_qos after basic_consume: the channel shows 8, the consumer 0 - unbounded."""
    h = History()
    h.record("note", "grader", message="work queue", work_queue=WORK)
    h.observe(CONSUMERS, consumers=[{"queue": WORK, "channel": "<c1>", "ack_required": True, "prefetch": 0}])
    h.observe(CHANNELS, channels=[{"pid": "<c1>", "prefetch": 8, "unacked": 0, "consumers": 1}])
    result = check_prefetch(8, lambda _: WORK)(h, **ARGS)
    assert not result.passed and "basic_qos must come before basic_consume" in result.evidence[0]


def test_heartbeats_fail_on_a_consumer_connection_without_heartbeats():
    h = History()
    h.observe(PLAN, payment_id="long", slow=8.0, poison=False, fail_first=0)
    pay(h, "long")
    call(h, "long", 1, 200, 10.0, 18.0)
    h.observe(CHARGES, rows=[["long", 100]])
    h.observe(CHANNELS, channels=[{"pid": "<rabbit@h.17.9.0>", "connection": "<rabbit@h.17.5.0>", "prefetch": 8,
                                   "unacked": 1, "consumers": 1}])
    h.observe(CONNECTIONS, connections=[{"pid": "<rabbit@h.17.5.0>", "heartbeat": 2}])
    assert check_heartbeats(2)(h, **ARGS).passed
    h.observe(CONNECTIONS, connections=[{"pid": "<rabbit@h.17.5.0>", "heartbeat": 0}])
    result = check_heartbeats(2)(h, **ARGS)
    assert not result.passed and "negotiated heartbeat 0" in result.evidence[0]
