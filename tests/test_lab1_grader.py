"""Grader selftest for lab 1: the reference passes every check, every mutant fails the check
named after its bug, and the starter fails with hints that point at its TODOs."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from grader.lab import find_lab
from grader.report import RunReport
from grader.runner import grade

MUTANTS = Path(__file__).parent / "mutants" / "lab1"
RUNTIME = "native"


@pytest.fixture(scope="module")
def lab():
    return find_lab("lab-1")


def summary(report: RunReport) -> str:
    lines = [f"seed {report.seed}"] + report.notes
    for r in report.results:
        lines.append(f"{r.id}: {'PASS' if r.passed else 'FAIL'} {r.message}")
        lines += [f"    {e}" for e in r.evidence[:5]]
    lines += [f"--- {name} ---\n{log}" for name, log in report.logs.items()]
    return "\n".join(lines)


@pytest.mark.parametrize("seed", [1, 2])
def test_reference_passes_every_check(lab, tmp_path, seed):
    report = grade(lab, lab.reference, RUNTIME, seed=seed, out_dir=tmp_path)
    assert report.passed, summary(report)
    assert report.score == report.max_score


@pytest.mark.parametrize("mutant", sorted(p.parent for p in MUTANTS.glob("*/mutant.toml")), ids=lambda p: p.name)
def test_mutant_fails_the_check_named_after_its_bug(lab, tmp_path, mutant):
    meta = tomllib.loads((mutant / "mutant.toml").read_text())
    report = grade(lab, mutant, RUNTIME, seed=7, out_dir=tmp_path)
    failed = {r.id: r for r in report.results if not r.passed}
    missing = [cid for cid in meta["expect_fail"] if cid not in failed]
    assert not missing, f"{mutant.name} ({meta['bug']}) passed {missing}:\n{summary(report)}"
    for cid in meta["expect_fail"]:
        assert failed[cid].message, f"{cid} failed without saying why"


def test_starter_fails_with_hints_that_point_at_the_todos(lab, tmp_path):
    report = grade(lab, lab.starter, RUNTIME, seed=3, out_dir=tmp_path)
    failed = [r for r in report.results if not r.passed]
    assert failed, summary(report)
    assert any("TODO(lab1-" in (r.hint or "") for r in failed), summary(report)
