"""Isolation for untrusted submissions (`labkit grade`); `labkit check` runs without it.

    from grader.sandbox import Sandbox, isolation_available
    if (why := isolation_available()) is not None: refuse, or grade with --trust-submissions
    with Sandbox(submission) as box:
        services = launch_services(lab.services, submission, ns.env(), log_dir, sandbox=box)

What is isolated and how: README.md in this folder.
"""
from __future__ import annotations

from .sandbox import Limits, Sandbox, SandboxError, SandboxedProcess, isolation_problem


def isolation_available() -> str | None:
    """None when submissions can be isolated on this machine, else the reason (and what to do)."""
    return isolation_problem()


__all__ = ["Limits", "Sandbox", "SandboxError", "SandboxedProcess", "isolation_available"]
