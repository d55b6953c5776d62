"""Checkers: pure functions from what was acknowledged and what was observed to a verdict.

Each returns a CheckResult carrying a one-line message, the evidence (keys and details a learner
can look up in the history and logs) and the lab's hint when it fails.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Collection, Iterable, Mapping

EVIDENCE_SHOWN = 10


@dataclass
class CheckResult:
    id: str
    title: str
    passed: bool
    points: float
    max_points: float
    message: str
    evidence: list[str] = field(default_factory=list)
    hint: str | None = None
    duration: float = 0.0
    skipped: bool = False
    errored: bool = False

    @classmethod
    def verdict(cls, id: str, title: str, max_points: float, passed: bool, message: str,
                evidence: list[str] | None = None, hint: str | None = None) -> "CheckResult":
        return cls(id, title, passed, max_points if passed else 0.0, max_points, message,
                   _capped(evidence or []), None if passed else hint)

    @classmethod
    def error(cls, id: str, title: str, max_points: float, message: str, hint: str | None = None) -> "CheckResult":
        """The check could not run (e.g. the learner's service crashed): no points."""
        return cls(id, title, False, 0.0, max_points, message, [], hint, errored=True)


def _capped(evidence: list[str]) -> list[str]:
    if len(evidence) <= EVIDENCE_SHOWN:
        return evidence
    return evidence[:EVIDENCE_SHOWN] + [f"... and {len(evidence) - EVIDENCE_SHOWN} more"]


def check_lost(id: str, title: str, max_points: float, acknowledged: Mapping[str, str],
               applied: Collection[str], hint: str | None = None) -> CheckResult:
    """Everything acknowledged must have been applied (at-least-once)."""
    missing = sorted(k for k in acknowledged if k not in applied)
    if missing:
        return CheckResult.verdict(id, title, max_points, False,
                                   f"{len(missing)} of {len(acknowledged)} acknowledged items never applied",
                                   [f"{k}: {acknowledged[k]}" for k in missing], hint)
    return CheckResult.verdict(id, title, max_points, True, f"all {len(acknowledged)} acknowledged items applied")


def check_duplicates(id: str, title: str, max_points: float, expected: Mapping[str, float],
                     observed: Mapping[str, float], hint: str | None = None, unit: str = "") -> CheckResult:
    """Per-key totals must equal the expected ones: a larger total is an effect applied twice."""
    wrong = []
    for key in sorted(set(expected) | set(observed)):
        want, got = expected.get(key, 0), observed.get(key, 0)
        if want != got:
            ratio = f", {got / want:.1f}x" if want else ""
            wrong.append(f"{key}: {got}{unit} (expected {want}{unit}{ratio})")
    if wrong:
        return CheckResult.verdict(id, title, max_points, False,
                                   f"{len(wrong)} of {len(expected)} totals differ from the distinct effects",
                                   wrong, hint)
    return CheckResult.verdict(id, title, max_points, True, f"all {len(expected)} totals match")


def check_unique(id: str, title: str, max_points: float, items: Iterable[tuple[str, str]],
                 hint: str | None = None) -> CheckResult:
    """Each logical key (e.g. an idempotency key) must map to exactly one id (e.g. an order)."""
    ids: dict[str, set[str]] = defaultdict(set)
    for key, value in items:
        ids[key].add(value)
    split = {k: v for k, v in ids.items() if len(v) > 1}
    if split:
        return CheckResult.verdict(id, title, max_points, False,
                                   f"{len(split)} keys produced more than one result",
                                   [f"key {k} -> {', '.join(sorted(v))}" for k, v in sorted(split.items())], hint)
    return CheckResult.verdict(id, title, max_points, True, f"{len(ids)} keys, one result each")


def check_final_state(id: str, title: str, max_points: float, expected: Mapping[str, str],
                      observed: Mapping[str, str | None], hint: str | None = None) -> CheckResult:
    """The final value per key must be the one the last acknowledged operation set."""
    wrong = [f"{k}: is {observed.get(k)!r}, expected {v!r}" for k, v in sorted(expected.items())
             if observed.get(k) != v]
    if wrong:
        return CheckResult.verdict(id, title, max_points, False,
                                   f"{len(wrong)} of {len(expected)} keys ended in the wrong state", wrong, hint)
    return CheckResult.verdict(id, title, max_points, True, f"all {len(expected)} keys in their final state")


@dataclass
class Case:
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
        return CheckResult.verdict(id, title, max_points, False, f"{len(failed)} of {len(cases)} cases failed",
                                   evidence, hint)
    return CheckResult.verdict(id, title, max_points, True, f"all {len(cases)} cases as expected")
