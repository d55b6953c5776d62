"""Grading a class: find the submissions, grade each (in parallel, resumably, N times), write every format.

    from grader.batch import Options, grade_class, isolation_available
    result = grade_class(lab, Path("submissions"), Path("graded"), Options(jobs=2, repeat=1))

`labkit grade` is the command around it; `python -m grader.batch.worker` is one run in its own process.
"""
from __future__ import annotations

import inspect

from .discover import Submission, discover
from .run import ClassResult, Options, RunOutcome, grade_class


GRADE_FLAGS = ("isolated", "isolate", "sandboxed", "sandbox")  # how grade() may spell "run it in the sandbox"


def _grade_flag() -> str | None:
    from ..runner import grade

    params = inspect.signature(grade).parameters
    return next((name for name in GRADE_FLAGS if name in params), None)


def isolation_available() -> str | None:
    """None when submissions can run isolated here (own uid, limits, per-run credentials), else why not.

    Both must hold: the sandbox (grader/sandbox) can run on this machine, and grade() can use it."""
    try:
        from ..sandbox import isolation_available as sandbox_problem
    except ImportError:
        return "this kit has no sandbox for submissions (grader/sandbox)"
    reason = sandbox_problem()
    if reason:
        return reason
    if _grade_flag() is None:
        return "grader.runner.grade() cannot run a submission in the sandbox yet"
    return None


def grade_options(isolated: bool) -> dict:
    """Keyword arguments for grader.runner.grade(): the sandbox flag for an isolated run. Never silently
    unisolated: asking for isolation where grade() has no flag is an error."""
    if not isolated:
        return {}
    flag = _grade_flag()
    if flag is None:
        raise RuntimeError("grader.runner.grade() has no sandbox flag: cannot isolate this run")
    return {flag: True}


__all__ = ["ClassResult", "Options", "RunOutcome", "Submission", "discover", "grade_class", "grade_options",
           "isolation_available"]
