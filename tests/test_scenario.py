"""The grader's model without servers: operations in the history, faults that record themselves,
checks that SKIP when their faults did not bite, and every lab.toml check backed by a checker."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from grader.checks import CheckResult
from grader.history import History
from grader.lab import all_labs, load_lab
from grader.nemesis import Fault, fault_events, happened
from grader.scenario import Check, Scenario, Params, judge


def test_operations_pair_invoke_with_completion_and_survive_a_round_trip(tmp_path):
    h = History()
    a = h.invoke("client", "place", key="k1", body={"customer_id": "c-1", "amount_cents": 5})
    b = h.invoke("client", "place", key="k2")
    h.complete(b, "fail", "client", "place", status=422)
    h.complete(a, "ok", "client", "place", status=201, body={"order_id": "o-1"})
    c = h.invoke("client", "cancel", key="k3")  # never completes: unknown outcome
    h.dump_jsonl(tmp_path / "h.jsonl")
    again = History.load_jsonl(tmp_path / "h.jsonl")
    ops = {op.id: op for op in again.ops()}
    assert [ops[a].type, ops[b].type, ops[c].type] == ["ok", "fail", "info"]
    assert ops[a].invoke["key"] == "k1" and ops[a].result["body"] == {"order_id": "o-1"}
    assert ops[c].t_complete is None
    assert [op.id for op in again.ops("cancel")] == [c]
    assert again.invoke("client", "place") == max(a, b, c) + 1  # ids go on after a reload


def test_a_completion_must_be_ok_fail_or_info():
    with pytest.raises(ValueError):
        History().complete(1, "done", "client", "place")


class Flip(Fault):
    kind = "flip"

    def __init__(self, target: str, bites: bool = True) -> None:
        super().__init__(target)
        self.bites = bites

    def inject(self, run) -> None:
        self.effective = self.bites
        self.detail = {"how": "by hand"}

    def heal(self, run) -> None:
        pass


class NeedsProxy(Flip):
    kind = "flip-proxied"

    def needs(self):
        from grader.nemesis import Need
        return [Need("proxy", self.target)]


@dataclass
class FakeRun:
    history: History = field(default_factory=History)
    services: dict = field(default_factory=dict)
    stack: object = None
    proxies: dict = field(default_factory=dict)
    out_dir: Path = Path(".")


def test_faults_record_start_end_and_unavailable():
    run = FakeRun(stack=type("S", (), {"runtime": "external", "servers": {}})())
    assert Flip("x").apply(run)
    assert not Flip("y", bites=False).apply(run)
    assert not NeedsProxy("kafka").apply(run)
    faults = {f["target"]: f for f in fault_events(run.history)}
    assert faults["x"]["effective"] and faults["x"]["start"] is not None and faults["x"]["end"] is not None
    assert not faults["y"]["effective"]
    assert "no fault proxy for kafka" in faults["kafka"]["reason"] and faults["kafka"]["start"] is None
    assert happened(run.history, "flip", "x") and not happened(run.history, "flip", "y")


def _lab_with(tmp_path: Path, checks: list[str]) -> object:
    body = "\n".join(f'[[checks]]\nid = "{c}"\npoints = 2\nhint = "h"\n' for c in checks)
    (tmp_path / "lab.toml").write_text(f'id = "lab-x"\nslug = "x"\ntitle = "X"\n{body}')
    return load_lab(tmp_path)


def test_a_check_whose_faults_did_not_bite_is_skip_with_zero_points_and_the_reason(tmp_path):
    run = FakeRun(stack=type("S", (), {"runtime": "external", "servers": {}})())
    NeedsProxy("kafka").apply(run)
    Flip("a").apply(run)
    always = lambda history, **args: CheckResult.verdict(passed=True, message="fine", **args)  # noqa: E731
    scenario = Scenario(Params(), [], {"needs-cut": Check(always, needs=[("flip-proxied", "kafka")]),
                                       "needs-flip": Check(always, needs=[("flip", "a")]),
                                       "never-ran": Check(always, needs=[("flip", "b")])})
    results = {r.id: r for r in judge(_lab_with(tmp_path, ["needs-cut", "needs-flip", "never-ran"]), scenario,
                                      run.history)}
    assert results["needs-flip"].state == "PASS"
    assert results["needs-cut"].state == "SKIP" and results["needs-cut"].points == 0
    assert "no fault proxy for kafka" in results["needs-cut"].message
    assert results["never-ran"].state == "SKIP" and "never injected" in results["never-ran"].message


def test_every_check_in_every_lab_has_a_checker_and_every_checker_a_lab_toml_entry():
    for lab in all_labs():
        try:
            module = importlib.import_module(lab.scenario)
        except ModuleNotFoundError:
            pytest.fail(f"{lab.id}: scenario module {lab.scenario} does not exist")
        checkers = set(module.SCENARIO.checks)
        declared = {c.id for c in lab.checks}
        assert declared <= checkers, f"{lab.id}: lab.toml checks without a checker: {sorted(declared - checkers)}"
        assert checkers <= declared, f"{lab.id}: checkers without a lab.toml entry: {sorted(checkers - declared)}"


def test_lab_toml_visibility_reaches_the_verdicts(tmp_path):
    (tmp_path / "lab.toml").write_text('id = "lab-x"\nslug = "x"\ntitle = "X"\n'
                                       '[[checks]]\nid = "a"\npoints = 1\n'
                                       '[[checks]]\nid = "b"\npoints = 1\nvisibility = "hidden"\n')
    lab = load_lab(tmp_path)
    always = lambda history, **args: CheckResult.verdict(passed=True, message="fine", **args)  # noqa: E731
    results = judge(lab, Scenario(Params(), [], {"a": Check(always), "b": Check(always)}), History())
    assert [r.visibility for r in results] == ["public", "hidden"]
    (tmp_path / "lab.toml").write_text('id = "lab-x"\nslug = "x"\ntitle = "X"\n'
                                       '[[checks]]\nid = "a"\npoints = 1\nvisibility = "secret"\n')
    with pytest.raises(Exception, match="visibility is 'public' or 'hidden'"):
        load_lab(tmp_path)


def test_a_check_needing_every_boundary_is_skip_naming_the_one_never_killed_after():
    """A sweep that saw three positions but landed a kill after two of them: a check that needs the
    service's boundaries is SKIP, naming the one missed; with all three it runs."""
    from grader.nemesis import BOUNDARIES, why_not
    from grader.nemesis.boundaries import coverage

    def sweep(killed: list[str]) -> History:
        history = History()
        detail = {"positions": ["db-commit#1", "db-commit#2", "consumer-ack#1"], "killed_after": killed,
                  "held_before": ["db-commit#1"]}
        history.record("fault", "nemesis", fault="boundary-sweep", target="read_model", fid=1, phase="start")
        history.record("fault", "nemesis", fault="boundary-sweep", target="read_model", fid=1, phase="end",
                       effective=True, **detail)
        return history

    partial = sweep(["db-commit#1", "consumer-ack#1"])
    assert not happened(partial, BOUNDARIES, "read_model")
    assert "never killed just after its db-commit#2" in why_not(partial, BOUNDARIES, "read_model")
    assert coverage(partial) == {"read_model": "2 of 3 boundaries killed after, 1 held before"}
    assert happened(sweep(["db-commit#1", "db-commit#2", "consumer-ack#1"]), BOUNDARIES, "read_model")
    assert "never swept" in why_not(History(), BOUNDARIES, "read_model")


def test_only_plays_the_phases_a_check_needs():
    from grader.scenario import select
    from grader.scenarios import lab1

    names = lambda sel: [p.name.split(" ")[0] for p in sel.phases]  # noqa: E731
    assert names(select(lab1.SCENARIO, ["poison-message"])) == ["start", "quiesce", "poison"]
    assert names(select(lab1.SCENARIO, ["api-contract"])) == ["start", "API", "quiesce"]
    traces = select(lab1.SCENARIO, ["traces"])
    assert names(traces) == ["start", "API", "quiesce", "poison", "traces:"]
    assert "3 of 6 phases run" in select(lab1.SCENARIO, ["poison-message"]).message
    with pytest.raises(ValueError, match="no check nope"):
        select(lab1.SCENARIO, ["nope"])


def test_only_runs_everything_where_phases_do_not_declare_their_faults():
    from grader.scenario import Check, Phase, Scenario, select

    scenario = Scenario(Params(), [Phase("a", lambda run, ctx: None), Phase("b", lambda run, ctx: None)],
                        {"x": Check(lambda h, **kw: None)})
    chosen = select(scenario, ["x"])
    assert len(chosen.phases) == 2 and "all phases run" in chosen.message
    declared = Scenario(Params(), [Phase("a", lambda run, ctx: None, always=True),
                                   Phase("b", lambda run, ctx: None, injects=("kill",))],
                        {"x": Check(lambda h, **kw: None)})
    unplaced = select(declared, ["x"])  # needs nothing and no phase serves it: it may need any of them
    assert len(unplaced.phases) == 2 and "no phase says it serves x" in unplaced.message


def test_a_fault_in_a_phase_that_does_not_declare_it_is_found():
    from grader.scenario import Check, Phase, Scenario, undeclared_faults

    scenario = Scenario(Params(), [Phase("a", lambda run, ctx: None, injects=("kill",), always=True)],
                        {"x": Check(lambda h, **kw: None)})
    history = History()
    history.record("note", "grader", message="phase a", phase="a")
    history.record("fault", "nemesis", fault="kill", target="s", fid=1, phase="start")
    assert undeclared_faults(scenario, history) == []
    history.record("fault", "nemesis", fault="cut", target="kafka", fid=2, phase="start")
    assert undeclared_faults(scenario, history) == ["cut in phase 'a'"]
