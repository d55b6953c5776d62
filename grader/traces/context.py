"""W3C Trace Context for the grader's own requests: every request carries a `traceparent` the
grader made (seeded), so it knows each operation's trace id before any span arrives."""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


@dataclass(frozen=True)
class TraceParent:
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits: the grader's (unexported) client span, the SERVER span's parent
    sampled: bool = True

    @property
    def header(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"


def new_traceparent(rng: random.Random) -> TraceParent:
    """A fresh sampled context from the run's seeded random source (never the all-zero ids)."""
    trace_id = rng.getrandbits(128) or 1
    span_id = rng.getrandbits(64) or 1
    return TraceParent(f"{trace_id:032x}", f"{span_id:016x}")


def parse_traceparent(value: str | bytes | None) -> TraceParent | None:
    """A version-00 traceparent header, or None if absent or malformed (all-zero ids are invalid)."""
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    m = _TRACEPARENT.match((value or "").strip())
    if not m or m.group(1) == "ff" or set(m.group(2)) == {"0"} or set(m.group(3)) == {"0"}:
        return None
    return TraceParent(m.group(2), m.group(3), bool(int(m.group(4), 16) & 1))
