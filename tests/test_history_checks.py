"""The history and the generic checkers, on synthetic data (pure logic: no servers needed)."""
from __future__ import annotations

import threading

from grader.checks import (EVIDENCE_SHOWN, Case, CheckResult, check_duplicates, check_expectations,
                           check_final_state, check_lost, check_unique, shown)
from grader.history import History

# --- history ---


def test_history_records_in_order_from_many_threads_and_round_trips(tmp_path):
    history = History()
    history.record("note", "grader", message="start")

    def client(n: int) -> None:
        for i in range(200):
            history.record("request", f"client-{n}", n=i)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    history.record("fault", "nemesis", what="cut", payload=b"\x00")  # not JSON: bytes are stored as text
    events = history.events()
    assert len(events) == len(history) == 802
    assert [e.t for e in events] == sorted(e.t for e in events)
    assert len(history.events("request")) == 800 and history.events("response") == []
    for n in range(4):  # each thread's events stay in its own order
        assert [e.data["n"] for e in events if e.actor == f"client-{n}"] == list(range(200))

    history.dump_jsonl(tmp_path / "run" / "history.jsonl")
    loaded = History.load_jsonl(tmp_path / "run" / "history.jsonl")
    assert loaded.events()[:-1] == events[:-1]
    assert loaded.events("fault")[0].data == {"what": "cut", "payload": "\x00"}  # bytes are saved as text


def test_events_are_frozen():
    event = History().record("note", "grader", message="x")
    try:
        event.kind = "other"  # type: ignore[misc]
    except AttributeError:
        return
    raise AssertionError("Event must be immutable")


# --- results ---


def test_error_and_skip_results_score_nothing():
    error = CheckResult.error("lost", "No lost orders", 3, "read-model exited with code 1", hint="see its log")
    assert (error.passed, error.points, error.max_points, error.state, error.hint) == (False, 0, 3, "ERROR", "see its log")
    skip = CheckResult.skip("trace", "Traces", 2, "no OTLP receiver on this runtime")
    assert (skip.passed, skip.points, skip.state) == (False, 0, "SKIP")


def test_evidence_is_shown_capped_but_kept_whole():
    result = check_lost("lost", "t", 1, {f"o-{i}": "x" for i in range(25)}, applied=[])
    assert len(result.evidence) == 25
    visible = shown(result.evidence)
    assert len(visible) == EVIDENCE_SHOWN + 1 and visible[-1] == "... and 15 more"
    assert shown(["a", "b"]) == ["a", "b"]


# --- checkers ---


def test_check_lost_names_each_missing_acknowledged_key_in_natural_order():
    acked = {"o-2": "request #2, 201 at t=0.4s", "o-10": "request #10, 201 at t=3.2s", "o-1": "request #1"}
    ok = check_lost("lost", "No acknowledged order lost", 4, acked, applied={"o-1", "o-2", "o-10", "o-99"})
    assert ok.passed and ok.points == 4 and ok.message == "all 3 acknowledged items applied" and ok.hint is None
    bad = check_lost("lost", "No acknowledged order lost", 4, acked, applied=["o-1"], hint="commit after the write")
    assert not bad.passed and bad.points == 0 and bad.max_points == 4
    assert bad.message == "2 of 3 acknowledged items never applied"
    assert bad.evidence == ["o-2: request #2, 201 at t=0.4s", "o-10: request #10, 201 at t=3.2s"]
    assert bad.hint == "commit after the write" and bad.state == "FAIL"


def test_check_duplicates_reports_ratio_and_direction():
    expected = {"customer c-3": 2100, "customer c-1": 500, "customer c-2": 700}
    observed = {"customer c-3": 4200, "customer c-1": 500, "customer c-2": 0, "customer c-9": 100}
    bad = check_duplicates("dup", "Effects once", 5, expected, observed, hint="dedupe by event id", unit=" cents")
    assert not bad.passed and bad.points == 0
    assert bad.message == "3 of 3 keys with the wrong total (2 too high, 1 too low)"
    assert bad.evidence == ["customer c-3: 4200 cents (expected 2100 cents, 2.0x)",
                            "customer c-9: 100 cents (expected 0 cents)",
                            "customer c-2: 0 cents (expected 700 cents, 0.0x)"]
    ok = check_duplicates("dup", "Effects once", 5, {"a": 0.1 + 0.2, "b": 3}, {"a": 0.3, "b": 3.0})
    assert ok.passed and ok.points == 5 and ok.message == "all 2 totals as expected"


def test_check_unique_flags_a_key_with_two_ids():
    items = [("k1", "o-1"), ("k1", "o-1"), ("k2", "o-2"), ("k2", "o-7"), ("k3", "o-3")]
    bad = check_unique("idem", "One order per key", 2, items, hint="store the key with the order")
    assert not bad.passed and bad.message == "1 of 3 keys produced more than one id"
    assert bad.evidence == ["k2 -> 2 ids: o-2, o-7"]
    ok = check_unique("idem", "One order per key", 2, [("k1", "o-1"), ("k1", "o-1")])
    assert ok.passed and ok.message == "1 key, one id each"


def test_check_final_state_compares_each_key():
    expected = {"o-1": "shipped", "o-2": "cancelled", "o-3": "placed"}
    bad = check_final_state("order", "Final status", 3, expected, {"o-1": "shipped", "o-2": "placed", "o-3": None})
    assert not bad.passed and bad.message == "2 of 3 keys ended in the wrong state"
    assert bad.evidence == ["o-2: is 'placed', expected 'cancelled'", "o-3: is missing, expected 'placed'"]
    assert check_final_state("order", "Final status", 3, expected, dict(expected)).passed


def test_check_expectations_lists_failing_cases_only():
    cases = [Case("POST /orders without a key", "400", "400", True),
             Case("POST /orders twice with one key", "201 then 200", "201 then 201", False, "request #5"),
             Case("GET /orders/unknown", "404", "500", False)]
    bad = check_expectations("api", "API contract", 2, cases, hint="read the contract")
    assert not bad.passed and bad.message == "2 of 3 cases failed"
    assert bad.evidence == ["POST /orders twice with one key: expected 201 then 200, got 201 then 201 (request #5)",
                            "GET /orders/unknown: expected 404, got 500"]
    ok = check_expectations("api", "API contract", 2, cases[:1])
    assert ok.passed and ok.points == 2 and ok.evidence == [] and ok.message == "all 1 case as expected"


def test_a_tombstone_downstream_is_not_a_duplicate_effect():
    """A cancel for an order the projection never saw leaves a tombstone (cancelled, 0 cents): the
    trace of a lost OrderPlaced (the lost checks judge it), not of an effect applied twice."""
    from grader.checks.orders import DOWNSTREAM, check_no_duplicate_effects

    history = History()
    op = history.invoke("client", "place", key="k-1", body={"customer_id": "c-1", "amount_cents": 500})
    history.complete(op, "ok", "client", "place", status=201, body={"order_id": "o-1"})
    history.observe(DOWNSTREAM, orders=[["o-1", "c-1", 500, "placed"], ["o-2", "c-1", 0, "cancelled"]],
                    totals=[["c-1", 1, 500]])
    result = check_no_duplicate_effects(history, id="no-duplicate-effects", title="t", max_points=3)
    assert result.passed, result.evidence
    history.observe(DOWNSTREAM, orders=[["o-1", "c-1", 500, "placed"], ["o-3", "c-1", 500, "placed"]],
                    totals=[["c-1", 2, 1000]])
    result = check_no_duplicate_effects(history, id="no-duplicate-effects", title="t", max_points=3)
    assert not result.passed and "2 orders of c-1 for 500 cents" in result.evidence[0]
