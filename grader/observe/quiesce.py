"""Waiting until the system has settled before the grader reads its final state."""
from __future__ import annotations

from typing import Callable

from ..history import History
from ..wait import WaitTimeout, wait_until


def quiesce(history: History, conditions: dict[str, Callable[[], bool]], timeout: float) -> bool:
    """Until every condition holds at once (bounded). Records whether it settled, and what did not."""
    pending: list[str] = []

    def settled() -> bool:
        pending[:] = []
        for name, condition in conditions.items():
            try:
                ok = condition()
            except Exception as e:  # a server restarting, a table not created yet: not settled
                ok, name = False, f"{name} ({type(e).__name__})"
            if not ok:
                pending.append(name)
        return not pending

    try:
        wait_until(settled, timeout, "quiesce", interval=0.25)
        history.observe("quiesce", settled=True)
        return True
    except WaitTimeout:
        history.observe("quiesce", settled=False, pending=pending, timeout=timeout)
        return False
