"""Flake hunt (not a test): grade the lab-1 reference N times in a row with fresh seeds.

    python -m tests.bench.consecutive [--runs 20] [--runtime native]

Prints one line per run (seed, score, wall time) and a summary; exits 1 if any run failed.
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

from grader.lab import find_lab
from grader.runner import grade


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--runtime", default="native")
    args = parser.parse_args()
    lab = find_lab("lab-1")
    passed, times = 0, []
    for i in range(1, args.runs + 1):
        seed = random.SystemRandom().randrange(1, 10**6)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.monotonic()
            report = grade(lab, lab.reference, args.runtime, seed=seed, out_dir=Path(tmp))
            times.append(time.monotonic() - t0)
        passed += report.passed
        failed = ", ".join(f"{r.id}: {r.message}" for r in report.results if not r.passed)
        print(f"run {i:2}: seed {seed:6}  {report.score:g}/{report.max_score:g}  {times[-1]:5.1f}s  {failed}", flush=True)
    print(f"\n{passed}/{args.runs} runs passed every check; wall time per run "
          f"min {min(times):.1f}s, mean {sum(times) / len(times):.1f}s, max {max(times):.1f}s")
    sys.exit(0 if passed == args.runs else 1)


if __name__ == "__main__":
    main()
