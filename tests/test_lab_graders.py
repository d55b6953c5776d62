"""Grader selftest for labs 2, 3 and 4: the reference passes every check (and a saved run is re-judged
the same without servers), every mutant fails the checks its mutant.toml names with evidence, and the
starter fails with hints that point at its TODOs. Each graded run has its own stack (its faults restart
servers), so the runs are spread over pytest-xdist workers. (Lab 1's mutants are graded isolated, in
tests/test_synthetic_class.py; its reference in tests/test_lab1_grader.py.)"""
from __future__ import annotations

from pathlib import Path

import pytest

from grader.lab import find_lab
from grader.runner import grade

from tests.grading import (assert_mutant_fails_its_checks, assert_reference_passes_and_recheck_agrees, mutant_params,
                           summary)

LABS = ["lab-2", "lab-3", "lab-4"]
RUNTIME = "native"
pytestmark = pytest.mark.slow


def mutants_of(lab_id: str) -> Path:
    return Path(__file__).parent / "mutants" / lab_id.replace("-", "")


def every_mutant() -> list:
    return [pytest.param(lab_id, *p.values, id=f"{lab_id}-{p.id}", marks=p.marks)
            for lab_id in LABS for p in mutant_params(mutants_of(lab_id))]


@pytest.mark.parametrize("lab_id", LABS)
def test_reference_passes_every_check_and_a_recheck_agrees(lab_id, tmp_path):
    # labs 3 and 4: every kind of observation their scenario records is read by at least one check
    assert_reference_passes_and_recheck_agrees(find_lab(lab_id), tmp_path, RUNTIME,
                                               every_observation_read=lab_id in ("lab-3", "lab-4"))


@pytest.mark.parametrize("lab_id, mutant", every_mutant())
def test_mutant_fails_the_checks_named_after_its_bug(lab_id, tmp_path, mutant):
    assert_mutant_fails_its_checks(find_lab(lab_id), mutant, tmp_path, RUNTIME)


@pytest.mark.class_scale  # not a reference or a mutant: graded by `make test-grader`, as lab 1's starter is
@pytest.mark.parametrize("lab_id", LABS)
def test_starter_fails_with_hints_that_point_at_the_todos(lab_id, tmp_path):
    lab = find_lab(lab_id)
    report = grade(lab, lab.starter, RUNTIME, seed=3, out_dir=tmp_path)
    failed = [r for r in report.results if not r.passed]
    assert failed, summary(report)
    assert any(f"TODO({lab_id.replace('-', '')}-" in (r.hint or "") for r in failed), summary(report)
