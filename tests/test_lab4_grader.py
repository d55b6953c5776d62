"""Grader selftest for lab 4: the reference passes every check (and a saved run is re-judged the
same without servers), every mutant fails the checks its mutant.toml names with evidence, and the
starter fails with hints that point at its TODOs. Each graded run has its own RabbitMQ and
PostgreSQL (its faults restart the broker), so the runs are spread over pytest-xdist workers."""
from __future__ import annotations

from pathlib import Path

import pytest

from grader.lab import find_lab
from grader.runner import grade

from tests.grading import (assert_mutant_fails_its_checks, assert_reference_passes_and_recheck_agrees, mutant_params,
                           summary)

MUTANTS = Path(__file__).parent / "mutants" / "lab4"
RUNTIME = "native"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lab():
    return find_lab("lab-4")


def test_reference_passes_every_check_and_a_recheck_agrees(lab, tmp_path):
    assert_reference_passes_and_recheck_agrees(lab, tmp_path, RUNTIME)


@pytest.mark.parametrize("mutant", mutant_params(MUTANTS))
def test_mutant_fails_the_checks_named_after_its_bug(lab, tmp_path, mutant):
    assert_mutant_fails_its_checks(lab, mutant, tmp_path, RUNTIME)


def test_starter_fails_with_hints_that_point_at_the_todos(lab, tmp_path):
    report = grade(lab, lab.starter, RUNTIME, seed=3, out_dir=tmp_path)
    failed = [r for r in report.results if not r.passed]
    assert failed, summary(report)
    assert any("TODO(lab4-" in (r.hint or "") for r in failed), summary(report)
