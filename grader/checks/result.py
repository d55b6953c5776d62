"""A check's verdict: what a report shows for one check."""
from __future__ import annotations

from dataclasses import dataclass, field

EVIDENCE_SHOWN = 10  # a learner reads the first few; the JSON report keeps them all


@dataclass
class CheckResult:
    id: str
    title: str
    passed: bool
    points: float
    max_points: float
    message: str  # one line, with counts
    evidence: list[str] = field(default_factory=list)  # keys and details a learner can look up
    hint: str | None = None
    duration: float = 0.0
    skipped: bool = False  # its faults did not happen here: 0 of its points, the maximum stays (one rule, every format)
    errored: bool = False  # the check could not run (e.g. the service crashed): no points
    visibility: str = "public"  # from lab.toml: "hidden" checks are shown to students after the due date

    @property
    def state(self) -> str:
        """PASS, FAIL, ERROR or SKIP."""
        if self.skipped:
            return "SKIP"
        if self.errored:
            return "ERROR"
        return "PASS" if self.passed else "FAIL"

    @classmethod
    def verdict(cls, id: str, title: str, max_points: float, passed: bool, message: str,
                evidence: list[str] | None = None, hint: str | None = None) -> "CheckResult":
        """All or nothing: max_points if passed, else 0 and the hint."""
        return cls(id, title, passed, max_points if passed else 0.0, max_points, message,
                   list(evidence or []), None if passed else hint)

    @classmethod
    def error(cls, id: str, title: str, max_points: float, message: str, hint: str | None = None) -> "CheckResult":
        """The check could not run (e.g. the learner's service crashed): no points."""
        return cls(id, title, False, 0.0, max_points, message, [], hint, errored=True)

    @classmethod
    def skip(cls, id: str, title: str, max_points: float, message: str) -> "CheckResult":
        """The check could not be verified (its faults did not happen): 0 of its points, the maximum stays."""
        return cls(id, title, False, 0.0, max_points, message, skipped=True)


def shown(evidence: list[str], limit: int = EVIDENCE_SHOWN) -> list[str]:
    """The first `limit` items, then one line saying how many more there are."""
    if len(evidence) <= limit:
        return list(evidence)
    return evidence[:limit] + [f"... and {len(evidence) - limit} more"]
