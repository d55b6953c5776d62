"""A graded run's outcome, and its renderings (console, JSON, JUnit XML)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..checks import CheckResult

_ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def plain(text: str) -> str:
    """Log text without colour codes and control characters (they garble terminals and XML)."""
    return _CONTROL.sub("", _ANSI.sub("", text.replace("\r\n", "\n")))


@dataclass
class RunReport:
    lab: str
    title: str
    submission: str
    seed: int
    runtime: str
    started_at: str  # ISO 8601
    duration: float  # seconds
    results: list[CheckResult]
    notes: list[str] = field(default_factory=list)
    logs: dict[str, str] = field(default_factory=dict)  # service -> log tail
    crashed: list[str] = field(default_factory=list)  # services that died on their own: their logs are shown
    faults: list[dict] = field(default_factory=list)  # injected faults: fault, target, start, end, effective, ...
    coverage: dict[str, str] = field(default_factory=dict)  # service -> "3 of 3 boundaries killed after, 2 held before"
    only: list[str] = field(default_factory=list)  # `labkit check --only`: the checks this partial run judged

    @property
    def counted(self) -> list[CheckResult]:
        """Every check counts: a skipped one (its faults did not happen) earns 0 of its points, so a
        run that could not probe everything never looks like full marks."""
        return list(self.results)

    @property
    def score(self) -> float:
        return sum(r.points for r in self.counted)

    @property
    def max_score(self) -> float:
        return sum(r.max_points for r in self.counted)

    @property
    def passed(self) -> bool:
        return bool(self.counted) and all(r.passed for r in self.counted)

    def logs_to_show(self, lines: int = 20) -> dict[str, str]:
        """Log tails worth a learner's attention, without the clients' chatter about the grader's
        faults (grader/report/logs.py): crashed services, and any with a traceback of its own."""
        from .logs import has_own_traceback, quiet

        shown = {}
        for name, log in self.logs.items():
            if log.strip() and (name in self.crashed or has_own_traceback(log)):
                kept = quiet(log).splitlines()
                shown[name] = "\n".join(kept[-lines:])
        return {name: log for name, log in shown.items() if log.strip()}

    def replay_command(self) -> str:
        """The command that plays this run again: same lab, submission and seed (the lab's own starter
        needs no --submission; any other folder does, or the replay would grade the starter)."""
        import shlex
        from pathlib import Path

        words = ["labkit", "check", self.lab, "--seed", str(self.seed)]
        folder = Path(self.submission)
        if self.submission and not (folder.name == "starter" and (folder.parent.name == self.lab or folder.parent.name.startswith(f"{self.lab}-"))):
            words += ["--submission", self.submission]
        for check in self.only:
            words += ["--only", check]
        return shlex.join(words)
