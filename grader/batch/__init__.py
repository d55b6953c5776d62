"""Grading a class: find the submissions, grade each (in parallel, resumably, N times), write every format.

    from grader.batch import Options, grade_class, isolation_available
    result = grade_class(lab, Path("submissions"), Path("graded"), Options(jobs=2, repeat=1))

`labkit grade` is the command around it; `python -m grader.batch.worker` is one run in its own process.
"""
from __future__ import annotations

from .discover import Submission, discover
from .run import ClassResult, Options, RunOutcome, grade_class


def isolation_available() -> str | None:
    """None when submissions can run isolated here (own uid, limits, per-run credentials), else why not.

    The sandbox (grader/sandbox) says; until it exists, isolation is unavailable and `labkit grade`
    needs --trust-submissions."""
    try:
        from .. import sandbox  # type: ignore[attr-defined]
    except ImportError:
        return "this kit has no sandbox for submissions yet (grader/sandbox)"
    reason = getattr(sandbox, "isolation_unavailable", None)
    return reason() if callable(reason) else "grader/sandbox does not say whether it can run here"


def grade_options(isolated: bool) -> dict:
    """Extra keyword arguments for grader.runner.grade() in an isolated run (the sandbox's flag)."""
    if not isolated:
        return {}
    try:
        from .. import sandbox  # type: ignore[attr-defined]
    except ImportError:
        return {}
    options = getattr(sandbox, "grade_options", None)
    return options() if callable(options) else {}


__all__ = ["ClassResult", "Options", "RunOutcome", "Submission", "discover", "grade_class", "grade_options",
           "isolation_available"]
