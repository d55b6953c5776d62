"""Catch rates under load (not a test): every mutant over several seeds, each reference many times,
all graded at once the way an instructor grades a class.

    python -m tests.bench.consecutive [--labs lab-1,lab-2] [--mutants all|N|name,...] [--seeds 5]
                                      [--reference-runs 20] [--jobs 6] [--seed BASE] [--out DIR]

Each mutant under tests/mutants/labN is graded with --seeds distinct seeds, each lab's reference
--reference-runs times, --jobs graded runs at once (each a process of its own, as `labkit grade` runs
them; mutants and references interleaved, so both see the same load). A mutant is caught when every
check its mutant.toml expects fails. Prints one line per run, then one table: per mutant "caught k/n"
with the checks that failed; per reference "passed k/n" with the checks that failed, and a replay
command for every miss. Exits 1 if a mutant was missed (one marked `grader_gap` is reported, not
counted) or a reference failed. The seeds derive from --seed, so a sample can be played again.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from grader.lab import Lab, all_labs, find_lab
from grader.mutate_runs import Job, Outcome, grade_many
from grader.runner import new_seed

MUTANTS = Path(__file__).resolve().parents[1] / "mutants"


@dataclass
class Subject:
    """What is graded repeatedly: a lab's reference or one of its mutants."""
    lab: Lab
    name: str  # "reference" or the mutant's folder name
    folder: Path
    expect_fail: tuple[str, ...] = ()  # empty for the reference
    gap: str = ""  # the mutant's declared grader gap, if any

    @property
    def is_reference(self) -> bool:
        return not self.expect_fail


def mutants_of(lab: Lab, which: str) -> list[Subject]:
    """`which`: "all", a number (the first N by name), or comma-separated names."""
    folders = sorted(p.parent for p in (MUTANTS / lab.id.replace("-", "")).glob("*/mutant.toml"))
    if which.isdigit():
        folders = folders[:int(which)]
    elif which != "all":
        names = set(which.split(","))
        folders = [f for f in folders if f.name in names]
    subjects = []
    for folder in folders:
        meta = tomllib.loads((folder / "mutant.toml").read_text())
        subjects.append(Subject(lab, folder.name, folder, tuple(meta["expect_fail"]), meta.get("grader_gap", "")))
    return subjects


def caught(subject: Subject, outcome: Outcome) -> bool:
    failed = {c["id"] for c in outcome.report.get("checks", []) if c.get("state") == "FAIL"}
    return bool(outcome.report) and set(subject.expect_fail) <= failed


def ok(subject: Subject, outcome: Outcome) -> bool:
    return outcome.passed if subject.is_reference else caught(subject, outcome)


def failing(outcomes: list[Outcome]) -> str:
    """The checks that failed across these runs, with how often: "ordering 2, traces 1"."""
    counts = Counter(c["id"] for o in outcomes for c in o.failed_checks())
    counts.update("no report" for o in outcomes if not o.report)
    return ", ".join(f"{cid} {n}" for cid, n in counts.most_common()) or "-"


def replay(subject: Subject, outcome: Outcome) -> str:
    return (f"labkit check {subject.lab.id} --runtime native --seed {outcome.job.seed}"
            + ("" if subject.is_reference else f" --submission {subject.folder}"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labs", default="all", help="comma-separated lab ids, or all")
    parser.add_argument("--mutants", default="all", help="per lab: all, a number (the first N by name), or names")
    parser.add_argument("--seeds", type=int, default=5, help="graded runs of each mutant, each with its own seed")
    parser.add_argument("--reference-runs", type=int, default=20, help="graded runs of each lab's reference")
    parser.add_argument("--jobs", type=int, default=6, help="graded runs at once")
    parser.add_argument("--runtime", default="native")
    parser.add_argument("--seed", type=int, default=None, help="base seed the run seeds derive from")
    parser.add_argument("--out", type=Path, help="keep every run's results here (default: a temp dir, removed)")
    args = parser.parse_args(argv)

    labs = all_labs() if args.labs == "all" else [find_lab(x) for x in args.labs.split(",")]
    base = args.seed if args.seed is not None else new_seed()
    rng = random.Random(base)
    subjects = [s for lab in labs for s in
                [Subject(lab, "reference", lab.reference)] + (mutants_of(lab, args.mutants) if args.seeds else [])]
    jobs: list[tuple[Subject, Job]] = []
    for s in subjects:
        runs = args.reference_runs if s.is_reference else args.seeds
        seeds = set()
        while len(seeds) < runs:
            seeds.add(rng.getrandbits(63))
        jobs += [(s, Job(s.lab, f"{s.lab.id}-{s.name}-{k}", s.folder, seed)) for k, seed in enumerate(sorted(seeds), 1)]
    rng.shuffle(jobs)  # references and mutants interleaved: both graded under the same load
    subject_of = {id(job): s for s, job in jobs}

    out = args.out or Path(tempfile.mkdtemp(prefix="labkit-consecutive-"))
    load0, t0 = os.getloadavg()[0], time.monotonic()
    print(f"{len(jobs)} graded runs ({', '.join(lab.id for lab in labs)}), {args.jobs} at once, base seed {base}, "
          f"{os.cpu_count()} cores, load {load0:.1f}", flush=True)

    def progress(o: Outcome) -> None:
        s = subject_of[id(o.job)]
        verdict = ("passed" if o.passed else "FAILED") if s.is_reference else ("caught" if caught(s, o) else "MISSED")
        score = f"{o.report.get('score', 0):g}/{o.report.get('max_score', 0):g}" if o.report else o.error
        print(f"{o.job.name:48} seed {o.job.seed:<20} {verdict:7} {score:8} {o.seconds:6.1f}s  "
              f"{', '.join(c['id'] for c in o.failed_checks())}", flush=True)

    try:
        outcomes = grade_many([job for _, job in jobs], out, args.jobs, args.runtime, progress)
        code = report(subjects, outcomes, subject_of, args, load0, time.monotonic() - t0)
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    return code


def report(subjects: list[Subject], outcomes: list[Outcome], subject_of: dict, args, load0: float,
           seconds: float) -> int:
    by_subject: dict[int, list[Outcome]] = {id(s): [] for s in subjects}
    for o in outcomes:
        by_subject[id(subject_of[id(o.job)])].append(o)
    times = sorted(o.seconds for o in outcomes)
    print(f"\n{'lab':6} {'submission':32} {'result':14} checks that failed (runs)")
    bad, replays = 0, []
    for s in subjects:
        runs = by_subject[id(s)]
        good = sum(ok(s, o) for o in runs)
        word = "passed" if s.is_reference else "caught"
        note = f"  [grader gap: {s.gap}]" if s.gap and good < len(runs) else ""
        print(f"{s.lab.id:6} {s.name:32} {word} {good:>2}/{len(runs):<4} {failing(runs)}{note}")
        if good < len(runs) and not s.gap:
            bad += 1
        replays += [replay(s, o) for o in runs if not ok(s, o)]
    if replays:
        print("\nreplay the misses:\n  " + "\n  ".join(replays))
    if times:
        print(f"\n{len(outcomes)} runs in {seconds / 60:.1f} min, {args.jobs} at once; wall time per run min "
              f"{times[0]:.0f}s, median {times[len(times) // 2]:.0f}s, max {times[-1]:.0f}s; load average "
              f"{load0:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
