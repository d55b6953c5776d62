"""A graded run's outcome, and its renderings (console, JSON, JUnit XML)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..checks import CheckResult


@dataclass
class RunReport:
    lab: str
    title: str
    submission: str
    seed: int
    runtime: str
    started_at: str
    duration: float
    results: list[CheckResult]
    notes: list[str] = field(default_factory=list)
    logs: dict[str, str] = field(default_factory=dict)  # service -> log tail

    @property
    def score(self) -> float:
        return sum(r.points for r in self.results)

    @property
    def max_score(self) -> float:
        return sum(r.max_points for r in self.results)

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)
