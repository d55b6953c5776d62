"""A synthetic class graded the way an instructor grades: ONE `labkit grade lab-1 CLASS` (isolated, the
default) over a correct submission, every lab-1 mutant, the starter, one that does not start and every
hostile submission of tests/hostile. Asserted: the expected score table, each mutant failing the checks
named after its bug with evidence, no attack succeeding, every format valid against its published spec,
and nothing of any run left behind (no process of a sandbox uid, no sandbox cgroup, no sandbox folder).

Every lab-1 mutant is graded here isolated, as a learner's code is (`make test-grader`); `make test`
grades each once unisolated (tests/test_lab1_grader.py).
Mutants are built on the reference, which the sandbox keeps out of reach, so each is handed in the way a
learner would hand in code built on a copy of it: with the reference vendored into its own folder.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import psutil
import pytest

from grader.lab import REPO_ROOT, find_lab
from grader.sandbox import isolation_available
from grader.sandbox.cgroups import ROOT as CGROUP_ROOT

from tests.grading import mutant_params
from tests.test_report_formats import CLASSROOM_SCHEMA, GRADESCOPE_SCHEMA

MUTANTS = REPO_ROOT / "tests" / "mutants" / "lab1"
HOSTILE = REPO_ROOT / "tests" / "hostile"
SEED = 7
# Without isolation (not root, no bubblewrap) the class is graded with --trust-submissions, so lab 1's
# mutants are still proven; the hostile submissions are then left out and their tests skipped.
ISOLATION_PROBLEM = isolation_available()
needs_isolation = pytest.mark.skipif(bool(ISOLATION_PROBLEM), reason=f"not isolated here: {ISOLATION_PROBLEM}")
# A whole class at once: `make test-grader` (each lab-1 mutant is also graded once, unisolated, by
# `make test` in tests/test_lab1_grader.py).
pytestmark = [pytest.mark.slow, pytest.mark.class_scale, pytest.mark.xdist_group("synthetic-class"),
              pytest.mark.timeout(3300)]


def mutant_names() -> list[str]:
    return sorted(p.parent.name for p in MUTANTS.glob("*/mutant.toml"))


def hostile_names() -> list[str]:
    if ISOLATION_PROBLEM:
        return []
    return sorted(p.name for p in HOSTILE.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def copy(src: Path, dest: Path) -> None:
    """As handed in: links stay links (tests/hostile/links_out is nothing but links)."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), dirs_exist_ok=True, symlinks=True)


def vendor_reference(dest: Path) -> None:
    """The reference as a package of the submission's own (it shadows the sandbox's `services`)."""
    (dest / "services").mkdir(parents=True, exist_ok=True)
    (dest / "services" / "__init__.py").write_text("")
    for package in ("common", "order_api", "read_model"):
        copy(REPO_ROOT / "services" / package, dest / "services" / package)


def build_class(root: Path) -> Path:
    subs = root / "submissions"
    for package in ("order_api", "read_model"):
        copy(REPO_ROOT / "services" / package, subs / "correct" / package)  # as a learner hands it in
    copy(find_lab("lab-1").starter, subs / "starter")
    for name in mutant_names():
        copy(MUTANTS / name, subs / f"mutant-{name}")
        vendor_reference(subs / f"mutant-{name}")
    for name in hostile_names():
        copy(HOSTILE / name, subs / f"hostile-{name}")
    for package in ("order_api", "read_model"):
        (subs / "does-not-start" / package).mkdir(parents=True)
        (subs / "does-not-start" / package / "__main__.py").write_text("raise SystemExit('missing configuration')\n")
    return subs


CLASS_UIDS = (3_910_000, 3_910_099)  # the class's own uids: other tests' sandboxes run beside it


def leftovers(tmp: Path) -> list[str]:
    """Processes of the class's uids, sandbox folders, and sandbox cgroups holding a process: none
    may outlive its run (grader/sandbox kills by cgroup and PID namespace)."""
    first, last = CLASS_UIDS
    left = [f"process {p.pid} {p.info['name']} uid={p.info['uids'].real}" for p in psutil.process_iter(["name", "uids"])
            if p.info["uids"] and first <= p.info["uids"].real <= last]
    left += [f"folder {p}" for p in tmp.glob("labkit-sandbox-*")]
    for group in CGROUP_ROOT.rglob("labkit-labkit-sandbox-*"):
        procs = group / "cgroup.procs"
        pids = procs.read_text().split() if procs.exists() else []
        owners = {psutil.Process(int(pid)).uids().real for pid in pids if psutil.pid_exists(int(pid))}
        left += [f"cgroup {group} with uid {uid}" for uid in owners if first <= uid <= last]
    return left


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic-class")
    subs = build_class(root)
    out = root / "graded"
    tmp = Path(tempfile.mkdtemp(prefix="labkit-class-", dir="/tmp"))  # the sandboxes' roots (a uid must traverse it)
    os.chmod(tmp, 0o711)
    env = {**os.environ, "TMPDIR": str(tmp), "LABKIT_SANDBOX_UIDS": "-".join(map(str, CLASS_UIDS))}
    argv = [sys.executable, "-m", "grader.cli", "grade", "lab-1", str(subs), "--out", str(out), "--jobs", "3",
            "--runtime", "native", "--seed", str(SEED)] + (["--trust-submissions"] if ISOLATION_PROBLEM else [])
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=2700, cwd=REPO_ROOT, env=env)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        (root / "grade-output.txt").write_text(done.stdout + done.stderr)  # what the instructor's terminal got
        reports = {p.parent.name: json.loads(p.read_text()) for p in out.glob("students/*/report.json")}
        left = leftovers(tmp)
        again = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, env=env)
        yield out, reports, left, again
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def states(report: dict) -> dict[str, dict]:
    return {c["id"]: c for c in report["checks"]}


def describe(report: dict) -> str:
    return "\n".join(f"{c['id']}: {c['state']} {c.get('message', '')} {c.get('evidence', [])[:3]}"
                     for c in report["checks"])


def test_every_submission_is_graded(graded):
    _, reports, _, _ = graded
    expected = {"correct", "starter", "does-not-start", *(f"mutant-{n}" for n in mutant_names()),
                *(f"hostile-{n}" for n in hostile_names())}
    assert set(reports) == expected


def test_the_correct_submission_scores_full_marks_in_the_sandbox(graded):
    _, reports, _, _ = graded
    report = reports["correct"]
    assert report["passed"] and report["score"] == report["max_score"], describe(report)


@pytest.mark.parametrize("mutant", mutant_params(MUTANTS))
def test_mutant_fails_the_checks_named_after_its_bug_with_evidence(graded, mutant):
    _, reports, _, _ = graded
    name = mutant.name
    meta = tomllib.loads((mutant / "mutant.toml").read_text())
    report = reports[f"mutant-{name}"]
    checks = states(report)
    missing = [cid for cid in meta["expect_fail"] if checks[cid]["state"] != "FAIL"]
    assert not missing, f"{name} ({meta['bug']}) did not fail {missing}:\n{describe(report)}"
    for cid in meta["expect_fail"]:
        assert checks[cid]["message"] and checks[cid]["evidence"], f"{cid} failed without evidence"
    assert report["score"] < report["max_score"]


def test_the_starter_fails_with_hints_that_point_at_the_todos(graded):
    _, reports, _, _ = graded
    report = reports["starter"]
    failed = [c for c in report["checks"] if c["state"] != "PASS"]
    assert failed and any("TODO(lab1-" in (c.get("hint") or "") for c in failed), describe(report)


def test_a_submission_that_does_not_start_gets_zero_and_says_why(graded):
    _, reports, _, _ = graded
    report = reports["does-not-start"]
    assert report["score"] == 0 and all(c["state"] == "ERROR" for c in report["checks"]), describe(report)
    assert all("order_api" in c["message"] for c in report["checks"]), describe(report)


@pytest.mark.parametrize("name", hostile_names())
def test_a_hostile_submission_scores_nothing_and_its_attack_fails(graded, name):
    out, reports, _, _ = graded
    report = reports[f"hostile-{name}"]
    assert report["score"] == 0, describe(report)
    logs = " ".join(p.read_text(errors="replace") for p in (out / "students" / f"hostile-{name}").rglob("*.log"))
    assert "ATTACK SUCCEEDED" not in logs, [line for line in logs.splitlines() if "ATTACK SUCCEEDED" in line][:5]


TERMINAL_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def test_nothing_a_submission_shaped_reaches_the_terminal_raw(graded):
    """tests/hostile/terminal_escapes: escape sequences in its spans, log and exit message. `labkit grade`
    (not a terminal here: rich adds no codes of its own) and `labkit recheck` show them only as text."""
    out, reports, _, _ = graded
    shown = (out.parent / "grade-output.txt").read_text()
    assert not TERMINAL_CONTROLS.search(shown), repr(TERMINAL_CONTROLS.search(shown))
    if "hostile-terminal_escapes" in reports:
        recheck = subprocess.run([sys.executable, "-m", "grader.cli", "recheck",
                                  str(out / "students" / "hostile-terminal_escapes")],
                                 capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
        assert "\\x1b" in recheck.stdout, recheck.stdout[-2000:]
        assert not TERMINAL_CONTROLS.search(recheck.stdout + recheck.stderr)


@needs_isolation
def test_nothing_of_any_run_is_left_behind(graded):
    _, _, left, _ = graded
    assert left == []


def test_every_format_is_written_and_valid(graded):
    out, reports, _, _ = graded
    for name in reports:
        folder = out / "students" / name
        jsonschema.validate(json.loads((folder / "results.json").read_text()), GRADESCOPE_SCHEMA)
        jsonschema.validate(json.loads((folder / "classroom.json").read_text()), CLASSROOM_SCHEMA)
        cases = list(ET.parse(folder / "junit.xml").getroot().iter("testcase"))
        assert len(cases) == len(reports[name]["checks"]), name
        assert (folder / "report.html").stat().st_size > 1000, name
    rows = (out / "class.csv").read_text().splitlines()
    assert sorted(r.split(",")[0] for r in rows[1:]) == sorted(reports)


def test_every_student_has_a_replay_and_the_class_table_a_row(graded):
    out, reports, _, _ = graded
    for name, report in reports.items():
        assert report["student"] == name and "--submission" in report["replay"] and str(report["seed"]) in report["replay"]
        for file in ("meta.json", "worker.log"):
            assert (out / "students" / name / file).exists(), f"{name}/{file}"
    header = (out / "class.csv").read_text().splitlines()[0]
    assert header.startswith("student,score,max_score,passed," + ",".join(c["id"] for c in reports["correct"]["checks"]))
    summary = json.loads((out / "summary.json").read_text())["students"]
    assert summary["mutant-ack_before_broker"]["failures"]
    assert all(f["replay"] for f in summary["mutant-ack_before_broker"]["failures"])


def test_grading_again_skips_what_is_graded(graded):
    _, reports, _, again = graded
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert f"{len(reports)} run(s) already graded" in again.stdout
