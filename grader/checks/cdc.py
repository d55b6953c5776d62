"""Replication-slot hygiene (lab 2), from the grader's samples of pg_replication_slots
(grader/observe/postgres.py `slots` observations) and the WAL position it read when the last
order had been acknowledged (`observe what="wal-mark"`)."""
from __future__ import annotations

from ..history import History
from .result import CheckResult

MIN_ADVANCES = 3  # distinct confirmed_flush_lsn values while the relay ran


def lsn(text: str | None) -> int:
    """'16/B374D848' -> an integer (None and junk -> -1)."""
    try:
        high, low = str(text).split("/")
        return (int(high, 16) << 32) + int(low, 16)
    except (ValueError, AttributeError):
        return -1


def check_slot_hygiene(history: History, **args) -> CheckResult:
    samples = history.observations("slots")
    mark = history.last_observation("wal-mark")
    if not samples or mark is None:
        return CheckResult.error(message="the replication slot was never sampled (the run did not get there)", **args)
    slots = {s["slot"] for e in samples for s in e.data.get("slots", [])}
    if not slots:
        return CheckResult.verdict(passed=False, message="no replication slot in the run's database",
                                   evidence=["pg_replication_slots has no slot for this database: is the relay "
                                             "reading the log?"], **args)
    evidence = []
    for slot in sorted(slots):
        seen = [(e.t, s) for e in samples for s in e.data.get("slots", []) if s["slot"] == slot]
        confirmed = sorted({lsn(s["confirmed_flush_lsn"]) for _, s in seen})
        final_t, final = seen[-1]
        if len(confirmed) < MIN_ADVANCES:
            evidence.append(f"slot {slot}: confirmed_flush_lsn took only {len(confirmed)} value(s) in "
                            f"{len(seen)} samples ({final['confirmed_flush_lsn']} at the end): it is not advanced")
        if lsn(final["confirmed_flush_lsn"]) < lsn(mark["lsn"]):
            evidence.append(f"slot {slot}: at t={final_t:.1f}s confirmed_flush_lsn {final['confirmed_flush_lsn']} is "
                            f"behind {mark['lsn']}, the WAL position when the last order had been acknowledged "
                            f"(t={mark.get('t', 0):.1f}s); retained WAL {final['retained_bytes']} bytes")
    if evidence:
        return CheckResult.verdict(passed=False, message="the replication slot does not keep up", evidence=evidence, **args)
    final = [s for _, s in [(e.t, s) for e in samples for s in e.data.get("slots", [])]][-1]
    return CheckResult.verdict(passed=True, message=f"slot advanced past the last acknowledged order; "
                               f"{final['retained_bytes']} bytes of WAL retained at the end", **args)
