"""Lab 1 and lab 2's order checks on synthetic histories (pure logic: no servers): a retried key's
answer, the events a check needs (else SKIP), and each lost operation failing exactly one check, the
one of the component that lost it."""
from __future__ import annotations

import json

from grader.checks.contract import check_api_contract
from grader.checks.events import acknowledged_during, held, in_flight_during, retried_unknown_answered
from grader.checks.orders import DOWNSTREAM, EVENTS, OUTBOX
from grader.history import Event, History
from grader.lab import find_lab
from grader.scenario import Check, Params, Scenario, judge, unread_observations
from grader.scenarios import lab1, lab2

ARGS = {"id": "c", "title": "t", "max_points": 1}


class Clock:
    """A synthetic history written at given times (seconds), as a run would have recorded it."""

    def __init__(self) -> None:
        self.history, self.t, self.ids = History(), 0.0, 0

    def at(self, t: float) -> "Clock":
        self.t = t
        return self

    def record(self, kind: str, actor: str, **data) -> None:
        self.history._events.append(Event(self.t, kind, actor, data))

    def op(self, f: str, invoke: dict, kind: str, result: dict) -> None:
        self.ids += 1
        self.record("invoke", "client", id=self.ids, f=f, **invoke)
        self.t += 0.1
        self.record(kind, "client", id=self.ids, f=f, **result)

    def place(self, key: str, body: dict, status: int | None, order_id: str | None = None, **meta) -> "Clock":
        kind = "info" if status is None or status >= 500 else "ok" if status < 300 else "fail"
        result = {"error": "timeout"} if status is None else {"status": status, "body": {"order_id": order_id}
                                                                 if order_id else {"error": "x"}}
        self.op("place", {"key": key, "body": body, "path": "/orders", **meta}, kind, result)
        return self

    def cancel(self, order_id: str, key: str, status: int | None) -> "Clock":
        result = {"error": "timeout"} if status is None else {"status": status, "body": {"order_id": order_id}}
        self.op("cancel", {"key": key, "body": {}, "path": f"/orders/{order_id}/cancel"},
                "info" if status is None else "ok", result)
        return self

    def fault(self, fid: int, kind: str, target: str, start: float, end: float, **detail) -> "Clock":
        self.history._events.append(Event(start, "fault", "nemesis", {"fault": kind, "target": target, "fid": fid,
                                                                      "phase": "start", "description": kind}))
        self.history._events.append(Event(end, "fault", "nemesis", {
            "fault": kind, "target": target, "fid": fid, "phase": "end", "effective": True,
            "description": f"{kind} {target}", **detail}))
        self.history._events.sort(key=lambda e: e.t)
        return self

    def observe(self, what: str, **data) -> "Clock":
        self.record("observe", "grader", what=what, **data)
        return self


def test_a_key_retried_after_an_unknown_outcome_must_be_answered_with_its_existing_order():
    body = {"customer_id": "c-1", "amount_cents": 777}
    run = Clock().place("k-1", body, None).at(5).place("k-1", body, 500, retry=True)  # UniqueViolation: its own order
    run.place("k-2", {"customer_id": "c-2", "amount_cents": 5}, 201, "o-2").place("p", {}, 400, probe="no-key")
    run.observe(DOWNSTREAM, orders=[["o-1", "c-1", 777, "placed"], ["o-2", "c-2", 5, "placed"]], totals=[])
    assert retried_unknown_answered(run.history) is None
    result = check_api_contract(run.history, **ARGS)
    assert not result.passed
    assert any("key k-1 retried after an unknown outcome" in e and "201 with order_id o-1" in e
               for e in result.evidence), result.evidence

    answered = Clock().place("k-1", body, None).at(5).place("k-1", body, 201, "o-1", retry=True)
    answered.place("p", {}, 400, probe="no-key").observe(DOWNSTREAM, orders=[["o-1", "c-1", 777, "placed"]], totals=[])
    assert not any("retried after an unknown" in e for e in check_api_contract(answered.history, **ARGS).evidence)


def test_no_retry_after_an_unknown_outcome_is_a_missing_event():
    run = Clock().place("k-1", {"customer_id": "c-1", "amount_cents": 1}, 201, "o-1")
    assert "no request whose outcome was unknown" in retried_unknown_answered(run.history)


def test_a_cut_with_no_cancel_in_flight_is_a_missing_event_and_one_with_it_happened():
    event = in_flight_during("cancel", ("cut",), "kafka", "cancel")
    run = Clock().cancel("o-1", "ck-0", 200).fault(1, "cut", "kafka", 2, 4)  # the cancel was over before
    assert "no cancel was in flight during a cut of kafka" in event(run.history)
    run.at(3).cancel("o-2", "ck-1", None)
    assert event(run.history) is None


def test_a_hold_that_fell_back_to_a_plain_kill_is_no_hold():
    run = Clock().fault(1, "hold-then-kill", "projector", 1, 2, how="fallback-kill")
    assert "never held" in held("hold-then-kill", "projector")(run.history)
    run.fault(2, "hold-then-kill", "projector", 3, 4, how="hold-then-kill")
    assert held("hold-then-kill", "projector")(run.history) is None


def test_orders_acknowledged_early_in_a_cut_are_the_event_the_relay_cut_needs():
    event = acknowledged_during("place", "cut", "kafka", 5.0, "order")
    run = Clock().fault(1, "cut", "kafka", 10, 22).at(19).place("k", {"customer_id": "c", "amount_cents": 1}, 201, "o")
    assert "no order was acknowledged during a cut of kafka at least 5 s before it ended" in event(run.history)
    run.at(12).place("k2", {"customer_id": "c", "amount_cents": 2}, 201, "o2")
    assert event(run.history) is None


def _lab2_history() -> History:
    """Three lost orders, all acknowledged while a relay crash was under way: o-p's event is in the
    topic (the projector lost it), o-r's in the outbox only (the relay), o-s's nowhere (the order
    service); o-d, in the outbox only, acknowledged during a database restart (the relay)."""
    run = Clock().fault(1, "crash-point", "cdc_relay", 20, 25).fault(2, "restart-server", "postgres", 60, 62)
    body = lambda n: {"customer_id": f"c-{n}", "amount_cents": 100 + n}  # noqa: E731
    run.at(21)
    for n, order_id in enumerate(["o-p", "o-r", "o-s", "o-ok"]):
        run.place(f"k-{order_id}", body(n), 201, order_id)
    run.at(61).place("k-d", body(9), 201, "o-d").at(90)
    payload = lambda o, status="placed": json.dumps({"order_id": o, "status": status, "version": 1})  # noqa: E731
    run.observe(DOWNSTREAM, orders=[["o-ok", "c-3", 103, "placed"]], totals=[["c-3", 1, 103]])
    run.observe(EVENTS, records=[{"partition": 0, "offset": 5, "key": "o-p", "value": payload("o-p")},
                                 {"partition": 1, "offset": 7, "key": "o-ok", "value": payload("o-ok")}])
    run.observe(OUTBOX, rows=[[o, payload(o)] for o in ("o-p", "o-r", "o-ok", "o-d")])
    return run.history


def test_each_lost_order_fails_exactly_one_check_the_one_of_the_component_that_lost_it():
    history = _lab2_history()
    checks = {cid: lab2.SCENARIO.checks[cid].fn(history, **{**ARGS, "id": cid})
              for cid in ("no-lost-events", "relay-crash-safety", "database-restart")}
    blamed = {cid: [e.split(":")[0] for e in r.evidence] for cid, r in checks.items()}
    assert sorted(blamed["no-lost-events"]) == ["o-p", "o-s"], checks["no-lost-events"].evidence
    assert blamed["relay-crash-safety"] == ["o-r"], checks["relay-crash-safety"].evidence
    assert blamed["database-restart"] == ["o-d"], checks["database-restart"].evidence
    lines = checks["no-lost-events"].evidence
    assert any("o-p" in e and "the relay published its event (0:5); the projector never applied it" in e for e in lines)
    assert any("o-s" in e and "no outbox row for it: the order service" in e for e in lines)
    assert "the relay never published its outbox row" in checks["relay-crash-safety"].evidence[0]
    assert "2 more judged by the checks of the faults they met" in checks["no-lost-events"].message


def test_api_contract_skips_when_no_retry_after_an_unknown_outcome_was_answered():
    """Every fault it needs bit, but the event its bug needs did not happen: SKIP, 0 points."""
    run = Clock().fault(1, "delay", "kafka", 1, 2).fault(2, "kill", "order_api", 3, 4)
    run.at(5).place("k-1", {"customer_id": "c-1", "amount_cents": 1}, 201, "o-1", probe="new")
    results = {r.id: r for r in judge(find_lab("lab-1"), lab1.SCENARIO, run.history)}
    assert results["api-contract"].state == "SKIP" and results["api-contract"].points == 0
    assert "no request whose outcome was unknown was sent again" in results["api-contract"].message


def test_an_observation_no_check_reads_is_reported():
    run = Clock().observe("downstream", orders=[], totals=[]).observe("gathered-and-ignored", rows=[])
    unfaulted = Scenario(Params(), [], {cid: Check(c.fn) for cid, c in lab1.SCENARIO.checks.items()})
    unread = unread_observations(find_lab("lab-1"), unfaulted, run.history)
    assert "gathered-and-ignored" in unread and "downstream" not in unread


def test_each_check_of_labs_1_and_2_is_a_row_of_the_readme_invariant_table():
    for lab_id in ("lab-1", "lab-2"):
        lab = find_lab(lab_id)
        table = (lab.dir / "README.md").read_text().split("## What the grader checks", 1)[1].split("\n## ", 1)[0]
        assert "| invariant | observation that proves it |" in table, lab_id
        missing = [c.id for c in lab.checks if f"| `{c.id}` | {c.points:g} |" not in table]
        assert not missing, f"{lab_id}: checks without a row in the README's table: {missing}"
