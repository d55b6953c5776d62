"""Every benchmark, one table at the end: `python -m tests.bench [--smoke] [--rounds 3] [--only lab1,otlp]`
(`make bench`, `make bench ARGS=--smoke`). Figures only: nothing is asserted."""
from __future__ import annotations

import argparse
import importlib

from tests.bench.figures import run

BENCHES = ["lab1", "lab2", "lab3", "lab4", "otlp"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one round: proves every benchmark runs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default=",".join(BENCHES), help="comma-separated: " + ", ".join(BENCHES))
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(BENCHES)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    run({n: importlib.import_module(f"tests.bench.{n}") for n in names}, args.rounds, args.smoke)


if __name__ == "__main__":
    main()
