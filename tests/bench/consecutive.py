"""Flake hunt (not a test): grade a lab's reference N times with fresh 64-bit seeds.

    python -m tests.bench.consecutive [--lab lab-1] [--runs 20] [--jobs 1] [--runtime native]

Each run has its own stack (its faults restart servers). Prints one line per run (seed, score,
wall time, what failed) and a summary; exits 1 if any run failed. Keep a failing run's folder
with --keep DIR to re-judge it (`labkit recheck`) or replay it (`--seed`).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from grader.lab import find_lab
from grader.runner import grade, new_seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lab", default="lab-1")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=1, help="graded runs at once")
    parser.add_argument("--runtime", default="native")
    parser.add_argument("--keep", type=Path, help="keep the results folders of failed runs here")
    args = parser.parse_args()
    lab = find_lab(args.lab)

    def one(i: int) -> tuple[int, bool, float]:
        seed = new_seed()
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.monotonic()
            report = grade(lab, lab.reference, args.runtime, seed=seed, out_dir=Path(tmp))
            took = time.monotonic() - t0
            if not report.passed and args.keep:
                import shutil
                shutil.copytree(tmp, args.keep / f"run-{i}-{seed}")
        failed = ", ".join(f"{r.id}: {r.state} {r.message[:120]}" for r in report.results if not r.passed)
        print(f"run {i:2}: seed {seed:20}  {report.score:g}/{report.max_score:g}  {took:5.1f}s  {failed}", flush=True)
        return i, report.passed, took

    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(one, range(1, args.runs + 1)))
    times = [t for _, _, t in results]
    passed = sum(ok for _, ok, _ in results)
    print(f"\n{args.lab}: {passed}/{args.runs} runs passed every check; wall time per run "
          f"min {min(times):.1f}s, mean {sum(times) / len(times):.1f}s, max {max(times):.1f}s ({args.jobs} at once)")
    sys.exit(0 if passed == args.runs else 1)


if __name__ == "__main__":
    main()
