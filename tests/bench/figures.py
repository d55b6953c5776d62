"""What every benchmark shares: figures measured side by side with their anchors, rounds until they
agree, and one table at the end.

Each bench module has SIZES (a real round), SMOKE (tiny sizes: proves it runs, measures nothing) and
`one_round(**sizes) -> list[Figure]`, which starts what it needs, measures, stops it. A benchmark runs
`rounds` rounds (default 3); while two rounds of one figure differ by more than 20 % it says so and
runs another (up to MAX_EXTRA more). The table gives per figure its best, min, median and max over
the rounds, and each ratio (taken within a round: the figure and its anchor measured side by side)
beside its anchor. No figure is asserted: speed is printed, never tested.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass
from types import ModuleType

SPREAD = 0.20
MAX_EXTRA = 2


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    anchor: str = ""  # what the figure is measured against, in the same round
    anchor_value: float | None = None
    higher_is_better: bool = True
    target: str = ""  # e.g. ">= 0.5 of the anchor", "< 250 ms"

    @property
    def ratio(self) -> float | None:
        return self.value / self.anchor_value if self.anchor_value else None


@dataclass
class Row:
    bench: str
    name: str
    unit: str
    values: list[float]
    anchor: str
    anchor_values: list[float]
    ratios: list[float]
    higher_is_better: bool
    target: str

    @property
    def best(self) -> float:
        return max(self.values) if self.higher_is_better else min(self.values)


def spread(values: list[float]) -> float:
    low, high = min(values), max(values)
    return (high - low) / low if low > 0 else (0.0 if high == low else float("inf"))


def run_bench(name: str, module: ModuleType, rounds: int, sizes: dict) -> list[Row]:
    """`rounds` rounds of one benchmark, more while two rounds differ by more than SPREAD."""
    results: list[list[Figure]] = []
    wanted = rounds
    while len(results) < wanted:
        print(f"\n--- {name}: round {len(results) + 1} (load {os.getloadavg()[0]:.1f})", flush=True)
        results.append(module.one_round(**sizes))
        if len(results) == wanted and len(results) >= 2 and wanted < rounds + MAX_EXTRA:
            wide = [(f.name, spread([r[i].value for r in results])) for i, f in enumerate(results[0])]
            wide = [(n, s) for n, s in wide if s > SPREAD]
            if wide:
                print(f"{name}: rounds differ by more than {SPREAD:.0%} ("
                      + ", ".join(f"{n}: {s:.0%}" for n, s in wide) + "): another round", flush=True)
                wanted += 1
    rows = []
    for i, first in enumerate(results[0]):
        figures = [r[i] for r in results]
        rows.append(Row(name, first.name, first.unit, [f.value for f in figures], first.anchor,
                        [f.anchor_value for f in figures if f.anchor_value is not None],
                        [f.ratio for f in figures if f.ratio is not None], first.higher_is_better, first.target))
    return rows


def fmt(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def print_table(rows: list[Row], rounds_note: str, load_start: float, seconds: float) -> None:
    print(f"\n=== benchmarks: {rounds_note}; {os.cpu_count()} cores; load average {load_start:.1f} at start, "
          f"{os.getloadavg()[0]:.1f} at end; {seconds / 60:.1f} min")
    head = (f"{'bench':6} {'figure':48} {'best':>9} {'min':>9} {'median':>9} {'max':>9} {'unit':10} "
            f"{'anchor (best)':>13} {'ratio med [min-max]':>21}  anchor / target")
    print(head)
    print("-" * len(head))
    for r in rows:
        anchor_best = fmt(max(r.anchor_values)) if r.anchor_values else ""
        ratio = (f"{statistics.median(r.ratios):.2f} [{min(r.ratios):.2f}-{max(r.ratios):.2f}]" if r.ratios else "")
        n = "" if len(r.values) < 2 or spread(r.values) <= SPREAD else f"  (spread {spread(r.values):.0%})"
        what = " / ".join(x for x in (r.anchor, r.target) if x)
        print(f"{r.bench:6} {r.name:48} {fmt(r.best):>9} {fmt(min(r.values)):>9} {fmt(statistics.median(r.values)):>9} "
              f"{fmt(max(r.values)):>9} {r.unit:10} {anchor_best:>13} {ratio:>21}  {what}{n}")


def run(benches: dict[str, ModuleType], rounds: int, smoke: bool) -> list[Row]:
    load0, t0 = os.getloadavg()[0], time.monotonic()
    rows: list[Row] = []
    for name, module in benches.items():
        rows += run_bench(name, module, 1 if smoke else rounds, module.SMOKE if smoke else module.SIZES)
    note = "smoke sizes, one round (figures mean nothing)" if smoke else f"best of {rounds} rounds"
    print_table(rows, note, load0, time.monotonic() - t0)
    return rows


def main_for(name: str, module: ModuleType) -> None:
    """A bench module run alone: `python -m tests.bench.lab1 [--smoke] [--rounds 3] [--size value ...]`."""
    parser = argparse.ArgumentParser(description=(module.__doc__ or name).splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one round")
    parser.add_argument("--rounds", type=int, default=3)
    for key, value in module.SIZES.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=None)
    args = parser.parse_args()
    sizes = dict(module.SMOKE if args.smoke else module.SIZES)
    sizes.update({k: getattr(args, k) for k in module.SIZES if getattr(args, k) is not None})
    load0, t0 = os.getloadavg()[0], time.monotonic()
    rows = run_bench(name, module, 1 if args.smoke else args.rounds, sizes)
    print_table(rows, "smoke sizes, one round" if args.smoke else f"best of {args.rounds} rounds", load0,
                time.monotonic() - t0)
