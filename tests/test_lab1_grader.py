"""Grader selftest for lab 1: the reference passes every check (and a saved run is re-judged the
same without servers), and on a runtime without fault proxies the checks that need them are SKIP
with the reason; every mutant fails the checks its mutant.toml names, with evidence (graded once here;
tests/test_synthetic_class.py grades them again as a class through `labkit grade`, isolated, in `make
test-grader`). Each graded run has its own stack (its faults restart PostgreSQL), so the runs are spread
over pytest-xdist workers."""
from __future__ import annotations


import pytest

from grader.lab import find_lab
from grader.runner import grade
from grader.stack import make_stack

from tests.grading import (MUTANTS_ROOT, assert_mutant_fails_its_checks, assert_reference_passes_and_recheck_agrees,
                           mutant_params, summary)

RUNTIME = "native"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lab():
    return find_lab("lab-1")


def test_reference_passes_every_check_and_a_recheck_agrees(lab, tmp_path):
    assert_reference_passes_and_recheck_agrees(lab, tmp_path, RUNTIME)


@pytest.mark.parametrize("mutant", mutant_params(MUTANTS_ROOT / "lab1"))
def test_mutant_fails_the_checks_named_after_its_bug(lab, tmp_path, mutant):
    assert_mutant_fails_its_checks(lab, mutant, tmp_path, RUNTIME)


def test_external_runtime_skips_what_needs_a_fault_proxy(lab, tmp_path, monkeypatch):
    """No proxy and no restartable servers: the checks that need them are SKIP with 0 points."""
    with make_stack(lab.infra, "native") as stack:
        for var, value in stack.env().items():
            monkeypatch.setenv(var, value)
        report = grade(lab, lab.reference, "external", seed=5, out_dir=tmp_path)
    states = {r.id: r for r in report.results}
    for cid in ("api-contract", "no-lost-orders", "no-duplicate-effects"):
        assert states[cid].state == "SKIP" and states[cid].points == 0, summary(report)
        assert "not verified" in states[cid].message
    assert states["poison-message"].state == "PASS", summary(report)
    assert report.score < report.max_score and not report.passed
