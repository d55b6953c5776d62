"""Graded runs of many (submission, seed) pairs at once, each in a process of its own: the batch
grader's worker (`python -m grader.batch.worker`, what `labkit grade` starts), unisolated. Used by
`labkit mutate` (a sample of generated mutants) and by tests/bench/consecutive.py (catch rates)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .lab import REPO_ROOT, Lab


@dataclass
class Job:
    lab: Lab
    name: str  # also the folder of its results under the output root
    submission: Path
    seed: int


@dataclass
class Outcome:
    job: Job
    out_dir: Path
    report: dict = field(default_factory=dict)  # report.json; empty if the run wrote none
    seconds: float = 0.0
    error: str = ""  # why there is no report

    @property
    def passed(self) -> bool:
        return bool(self.report.get("passed"))

    def failed_checks(self) -> list[dict]:
        """The checks that did not pass and were judged (FAIL or ERROR; a SKIP is no verdict)."""
        return [c for c in self.report.get("checks", []) if c.get("state") in ("FAIL", "ERROR")]


def grade_one(job: Job, out_root: Path, runtime: str = "native", timeout: float = 900) -> Outcome:
    out_dir = out_root / job.name
    out_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "grader.batch.worker", job.lab.id, str(job.submission), "--out", str(out_dir),
            "--runtime", runtime, "--seed", str(job.seed), "--student", job.name]
    env = {**os.environ, "LABKIT_BATCH_PID": str(os.getpid()),  # the worker stops itself once we are gone
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)}
    t0 = time.monotonic()
    with open(out_dir / "worker.log", "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=REPO_ROOT)
        try:
            proc.wait(timeout)
            error = f"the run exited with code {proc.returncode} without a report (see {out_dir / 'worker.log'})"
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            error = f"the run took longer than {timeout:.0f} s and was stopped"
        except BaseException:  # Ctrl-C: stop the run (it stops its servers) before going
            proc.terminate()
            proc.wait(30)
            raise
    seconds = time.monotonic() - t0
    try:
        return Outcome(job, out_dir, json.loads((out_dir / "report.json").read_text()), seconds)
    except (OSError, ValueError):
        return Outcome(job, out_dir, {}, seconds, error)


def grade_many(jobs: Iterable[Job], out_root: Path, parallel: int, runtime: str = "native",
               on_outcome: Callable[[Outcome], None] = lambda o: None) -> list[Outcome]:
    """Every job graded, `parallel` at once; `on_outcome` is called as each finishes (in any order)."""
    def one(job: Job) -> Outcome:
        outcome = grade_one(job, out_root, runtime)
        on_outcome(outcome)
        return outcome

    with ThreadPoolExecutor(max(1, parallel)) as pool:
        return list(pool.map(one, list(jobs)))
