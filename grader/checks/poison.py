"""Poison messages: malformed records go to a dead-letter destination and the consumer goes on.

Judged from two observations the scenario records after injecting the records (grader/nemesis/
poison.py): `dead-letters` (the records the grader read from the DLQ, with their headers) and
`after-poison` (whether the consumer process was still running, and whether an order placed after
the poison was applied downstream).
"""
from __future__ import annotations

from ..history import History
from .generic import Case, check_expectations
from .result import CheckResult


def check_poison(history: History, consumer: str = "read_model", error_header: str = "error", **args) -> CheckResult:
    injected = [e for e in history.events("fault") if e.data.get("fault") == "poison" and e.data.get("phase") == "end"]
    since = injected[0].t if injected else 0.0
    exits = [e.data for e in history.observations("exit") if e.t >= since and e.data.get("service") == consumer]
    injected = [e.data for e in injected]
    dead = history.last_observation("dead-letters")
    after = history.last_observation("after-poison")
    if not injected or dead is None or after is None:
        return CheckResult.error(message="the poison step did not run to its end", **args)
    want = sum(d.get("count", 0) for d in injected)
    records = dead.get("records", [])
    flagged = [r for r in records if r.get("headers", {}).get(error_header)]
    cases = [
        Case("consumer keeps running after malformed records", "running, no exit",
             ", ".join(f"exited with code {x.get('code')}" for x in exits) or after.get("consumer", "?"),
             after.get("consumer") == "running" and not exits),
        Case("malformed records in the dead-letter topic", f"{want} records in {dead.get('topic')} with an "
             f"'{error_header}' header", f"{len(records)} records, {len(flagged)} with an '{error_header}' header",
             len(flagged) >= want),
        Case("an order placed after the malformed records", "applied downstream",
             "applied" if after.get("follow_up_applied") else "not applied", bool(after.get("follow_up_applied"))),
    ]
    return check_expectations(cases=cases, **args)
