"""What every lab's grader selftest shares: a readable summary of a run, and the proof that the
reference passes with every fault biting and that its saved history is re-judged the same."""
from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from grader.cli import app
from grader.history import History
from grader.lab import Lab
from grader.report import RunReport
from grader.runner import grade, report_from_history, scenario_of
from grader.scenario import unread_observations

# Labs whose README states each invariant with the observation that proves it: every observation
# kind their scenario records must be read by some check (no evidence gathered and then ignored).
EVERY_OBSERVATION_READ = {"lab-1", "lab-2"}

MUTANTS_ROOT = Path(__file__).parent / "mutants"  # one folder per lab: lab1/, lab2/, ...


def summary(report: RunReport) -> str:
    lines = [f"seed {report.seed}, {report.duration:.0f}s"] + report.notes
    for r in report.results:
        lines.append(f"{r.id}: {r.state} {r.message}")
        lines += [f"    {e}" for e in r.evidence[:5]]
    lines += [f"fault {f['fault']} {f['target']} effective={f['effective']} {f.get('reason') or ''}" for f in report.faults]
    lines += [f"--- {name} ---\n{log}" for name, log in report.logs.items()]
    return "\n".join(lines)


def assert_reference_passes_and_recheck_agrees(lab: Lab, out_dir: Path, runtime: str = "native", seed: int = 1,
                                               every_observation_read: bool = False) -> None:
    report = grade(lab, lab.reference, runtime, seed=seed, out_dir=out_dir)
    print(f"graded run of the {lab.id} reference: {report.duration:.1f}s wall")
    assert report.passed, summary(report)
    assert report.score == report.max_score
    assert all(f["effective"] for f in report.faults if not f.get("reason")), summary(report)
    history = History.load_jsonl(out_dir / "history.jsonl")
    if lab.id in EVERY_OBSERVATION_READ:
        assert not unread_observations(lab, scenario_of(lab), history), "observations no check reads"
    from grader.scenario import undeclared_faults

    undeclared = undeclared_faults(scenario_of(lab), history)
    assert not undeclared, f"add these to the phase's Phase(injects=...), or `--only` leaves them out: {undeclared}"
    again = report_from_history(lab, history, report.submission, report.seed,
                                report.runtime, report.started_at, report.duration)
    assert [(r.id, r.state, r.points, r.message, r.evidence) for r in again.results] == \
           [(r.id, r.state, r.points, r.message, r.evidence) for r in report.results]
    if every_observation_read:
        unread = observation_kinds_unread(lab, History.load_jsonl(out_dir / "history.jsonl"))
        assert not unread, f"observations recorded but read by no check: {sorted(unread)}"
    result = CliRunner().invoke(app, ["recheck", str(out_dir)])
    assert result.exit_code == 0, result.output
    assert f"score {report.max_score:g}/{report.max_score:g}" in result.output


RUNNER_KINDS = {"exit"}  # recorded by the runner's supervisor for any lab, not by the lab's scenario


def observation_kinds_unread(lab: Lab, history: History) -> set[str]:
    """The kinds of observation a run recorded that no check of the lab reads when it re-judges
    the history: evidence the grader gathers and then ignores (a blind spot waiting to happen)."""
    from grader.runner import scenario_of
    from grader.scenario import judge

    read: set[str] = set()
    everything = history.observations

    def observations(what: str):
        read.add(what)
        return everything(what)

    history.observations = observations  # type: ignore[method-assign]  # last_observation reads through it
    try:
        judge(lab, scenario_of(lab), history)
    finally:
        del history.observations
    recorded = {e.data.get("what") for e in history.events("observe")}
    return recorded - read - RUNNER_KINDS


def mutant_params(folder: Path) -> list:
    """Every mutant under `folder`, one pytest param each; one whose mutant.toml names a `grader_gap`
    (a real bug the grader does not yet reliably expose) is a non-strict xfail until the gap is closed."""
    import tomllib

    import pytest

    params = []
    for path in sorted(p.parent for p in folder.glob("*/mutant.toml")):
        gap = tomllib.loads((path / "mutant.toml").read_text()).get("grader_gap")
        marks = [pytest.mark.xfail(reason=f"grader gap: {gap}", strict=False)] if gap else []
        params.append(pytest.param(path, id=path.name, marks=marks))
    return params


def assert_mutant_fails_its_checks(lab: Lab, mutant: Path, out_dir: Path, runtime: str = "native") -> None:
    """Graded at seed 7, the mutant fails every check its mutant.toml expects, each with evidence."""
    import tomllib

    meta = tomllib.loads((mutant / "mutant.toml").read_text())
    report = grade(lab, mutant, runtime, seed=7, out_dir=out_dir)
    print(f"graded run of {mutant.name}: {report.duration:.1f}s wall")
    failed = {r.id: r for r in report.results if r.state == "FAIL"}
    missing = [cid for cid in meta["expect_fail"] if cid not in failed]
    assert not missing, f"{mutant.name} ({meta['bug']}) did not fail {missing}:\n{summary(report)}"
    for cid in meta["expect_fail"]:
        assert failed[cid].message and failed[cid].evidence, f"{cid} failed without evidence"
