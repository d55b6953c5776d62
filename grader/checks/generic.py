"""Generic checkers: each compares what the grader knows should be true with what it observed.

Pure functions over plain data (no I/O), so a lab's scenario gathers the data and these judge it.
All or nothing: a check earns its points only if every key is right; the evidence names the keys
that are not, with details a learner can look up in the history and logs.
"""
from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Collection, Iterable, Mapping

from .result import CheckResult


def _natural(key: str) -> list:
    """Sort key so that c-2 comes before c-10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(key))]


def _num(x: float) -> str:
    if isinstance(x, float) and x.is_integer():
        x = int(x)
    return str(round(x, 6) if isinstance(x, float) else x)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def check_lost(id: str, title: str, max_points: float, acknowledged: Mapping[str, str],
               applied: Collection[str], hint: str | None = None) -> CheckResult:
    """Everything acknowledged must have been applied (at-least-once). Values are details to show."""
    applied = set(applied)
    missing = sorted((k for k in acknowledged if k not in applied), key=_natural)
    if missing:
        return CheckResult.verdict(id, title, max_points, False,
                                   f"{len(missing)} of {_plural(len(acknowledged), 'acknowledged item')} never applied",
                                   [f"{k}: {acknowledged[k]}" for k in missing], hint)
    return CheckResult.verdict(id, title, max_points, True,
                               f"all {_plural(len(acknowledged), 'acknowledged item')} applied")


def unsettled(history) -> list[str]:
    """What the run was still waiting for when a quiescence wait gave up (observe quiesce): context
    for a check that judges the final state."""
    return [f"the run never settled: {', '.join(map(str, e.data.get('pending') or []))} still pending after "
            f"{e.data.get('timeout')} s" for e in history.observations("quiesce") if e.data.get("settled") is False]


def check_duplicates(id: str, title: str, max_points: float, expected: Mapping[str, float],
                     observed: Mapping[str, float], hint: str | None = None, unit: str = "") -> CheckResult:
    """Per-key totals must equal the expected ones: a larger total is an effect applied twice.

    A key missing on one side counts as 0 there. Floats compare with a tolerance (sums of money).
    """
    above, below = [], []
    for key in sorted(set(expected) | set(observed), key=_natural):
        want, got = expected.get(key, 0), observed.get(key, 0)
        if math.isclose(want, got, rel_tol=1e-9, abs_tol=1e-9):
            continue
        ratio = f", {got / want:.1f}x" if want else ""
        (above if got > want else below).append(f"{key}: {_num(got)}{unit} (expected {_num(want)}{unit}{ratio})")
    if above or below:
        return CheckResult.verdict(
            id, title, max_points, False,
            f"{len(above) + len(below)} of {_plural(len(expected), 'key')} with the wrong total "
            f"({len(above)} too high, {len(below)} too low)", above + below, hint)
    return CheckResult.verdict(id, title, max_points, True, f"all {_plural(len(expected), 'total')} as expected")


def check_unique(id: str, title: str, max_points: float, items: Iterable[tuple[str, str]],
                 hint: str | None = None) -> CheckResult:
    """Each logical key (e.g. an idempotency key) must map to exactly one id (e.g. an order id)."""
    ids: dict[str, set[str]] = defaultdict(set)
    for key, value in items:
        ids[key].add(value)
    split = {k: v for k, v in ids.items() if len(v) > 1}
    if split:
        return CheckResult.verdict(
            id, title, max_points, False, f"{len(split)} of {_plural(len(ids), 'key')} produced more than one id",
            [f"{k} -> {len(split[k])} ids: {', '.join(sorted(split[k], key=_natural))}"
             for k in sorted(split, key=_natural)], hint)
    return CheckResult.verdict(id, title, max_points, True, f"{_plural(len(ids), 'key')}, one id each")


def check_final_state(id: str, title: str, max_points: float, expected: Mapping[str, str],
                      observed: Mapping[str, str | None], hint: str | None = None) -> CheckResult:
    """The final value per key (e.g. an order's status) must be the one expected; None = not found."""
    wrong = [f"{k}: is {'missing' if observed.get(k) is None else repr(observed.get(k))}, expected {v!r}"
             for k, v in sorted(expected.items(), key=lambda kv: _natural(kv[0])) if observed.get(k) != v]
    if wrong:
        return CheckResult.verdict(id, title, max_points, False,
                                   f"{len(wrong)} of {_plural(len(expected), 'key')} ended in the wrong state",
                                   wrong, hint)
    return CheckResult.verdict(id, title, max_points, True, f"all {_plural(len(expected), 'key')} in the expected state")


@dataclass
class Case:
    """One probe of a contract: what was asked, what should have happened, what did."""

    name: str
    expected: str
    actual: str
    ok: bool
    detail: str = ""


def check_expectations(id: str, title: str, max_points: float, cases: list[Case],
                       hint: str | None = None) -> CheckResult:
    """A list of probes; passes only if every one did what the contract says."""
    failed = [c for c in cases if not c.ok]
    if failed:
        evidence = [f"{c.name}: expected {c.expected}, got {c.actual}" + (f" ({c.detail})" if c.detail else "")
                    for c in failed]
        return CheckResult.verdict(id, title, max_points, False,
                                   f"{len(failed)} of {_plural(len(cases), 'case')} failed", evidence, hint)
    return CheckResult.verdict(id, title, max_points, True, f"all {_plural(len(cases), 'case')} as expected")
