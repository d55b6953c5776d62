"""A PostgreSQL-aware tap on the run's postgres fault proxy: count the statements that name a key,
and hold or slow the database's answer to them - without the service's cooperation.

The proxy (proxy.py) hands each connection's client->server bytes to the tap before forwarding
them. The tap frames them as the PostgreSQL wire protocol (an untyped startup message, after an
SSLRequest/GSSENCRequest another one, then `type byte + int32 length` messages) and looks inside
the three messages that can carry a statement's key: Query ('Q', simple protocol: psycopg2, a
literal in the SQL), Parse ('P': SQL with a literal) and Bind ('B': extended protocol, the key as
a parameter - psycopg 3, asyncpg). A statement "names" a key when the key's bytes occur in one of
those messages; the lab chooses keys no other key contains (fixed-width ids).

What it gives the grader:
- `reads`: every statement naming a key, as (t, key, connection) - the database load per key,
  counted outside the service (the native server has no pg_stat_statements);
- `hold(key, n)`: the answers to the next `n` statements naming `key` wait until released (or a
  bound): the statement has RUN - its snapshot is taken - but the service does not have the rows
  yet. A slow miss, exactly: an update can commit and be invalidated meanwhile;
- `slow(key, ms)`: every answer to a statement naming `key` is late by `ms`.

The faults below wrap these for a scenario (recorded, healed, `effective` when they bit). A
connection over TLS cannot be read: the tap then leaves it alone (the native server has no TLS).
"""
from __future__ import annotations

import asyncio
import itertools
import re
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from .base import Fault, Need, Target

if TYPE_CHECKING:
    from .proxy import TcpProxy

UNTYPED_CODES = {80877103, 80877104}  # SSLRequest, GSSENCRequest: another untyped message follows
STATEMENT_TYPES = {ord("Q"), ord("P"), ord("B")}
MAX_MESSAGE = 64 << 20


@dataclass
class Hold:
    """The answers to the next `n` statements naming `key` wait until release() or `max_seconds`."""

    key: str
    n: int = 1
    max_seconds: float = 10.0
    held: list[tuple[float, int]] = field(default_factory=list)  # (t, connection) of each statement held
    _released: threading.Event = field(default_factory=threading.Event)
    _seen: threading.Condition = field(default_factory=threading.Condition)

    def take(self, t: float, conn: int) -> bool:
        with self._seen:
            if len(self.held) >= self.n or self._released.is_set():
                return False
            self.held.append((t, conn))
            self._seen.notify_all()
            return True

    def wait_held(self, count: int = 1, timeout: float = 10.0) -> bool:
        """Until `count` statements are held (bounded)."""
        with self._seen:
            return self._seen.wait_for(lambda: len(self.held) >= count, timeout)

    def release(self) -> None:
        self._released.set()

    @property
    def released(self) -> bool:
        return self._released.is_set()


class _Connection:
    """One client connection's parser state and its gate for the server's answers."""

    def __init__(self, tap: "PgTap", cid: int) -> None:
        self.tap, self.id = tap, cid
        self.buf = bytearray()
        self.untyped = True  # the startup phase: messages without a type byte
        self.broken = False  # TLS or a stream we cannot frame: stop looking
        self.gates: list[tuple[Hold | None, float]] = []  # (hold or None for a plain delay, until when at most)

    def client_bytes(self, data: bytes) -> None:
        if self.broken:
            return
        self.buf += data
        while True:
            if self.untyped:
                if len(self.buf) < 8:
                    return
                (length,) = struct.unpack_from("!i", self.buf, 0)
                if length < 8 or length > 10000:
                    self.broken = True
                    return
                if len(self.buf) < length:
                    return
                (code,) = struct.unpack_from("!i", self.buf, 4)
                del self.buf[:length]
                if code not in UNTYPED_CODES:
                    self.untyped = False
                continue
            if len(self.buf) < 5:
                return
            kind = self.buf[0]
            (length,) = struct.unpack_from("!i", self.buf, 1)
            if length < 4 or length > MAX_MESSAGE:
                self.broken = True
                return
            if len(self.buf) < 1 + length:
                return
            if kind in STATEMENT_TYPES:
                self.tap._statement(self, bytes(self.buf[5:1 + length]))
            del self.buf[:1 + length]

    async def before_answer(self) -> None:
        """Called by the proxy before it forwards a chunk of the server's answer."""
        while self.gates:
            hold, until = self.gates[0]
            while time.monotonic() < until and (hold is None or not hold.released):
                await asyncio.sleep(min(0.01 if hold else until - time.monotonic(), 0.05))
            self.gates.pop(0)


class PgTap:
    """Attach with `PgTap.attach(proxy, pattern, clock)`; `pattern` matches the keys (bytes regex)."""

    def __init__(self, pattern: bytes, clock: Callable[[], float] = time.monotonic) -> None:
        self.pattern = re.compile(pattern)
        self.clock = clock
        self.reads: list[tuple[float, str, int]] = []
        self._holds: list[Hold] = []
        self._slow: dict[str, float] = {}  # key -> seconds
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    @classmethod
    def attach(cls, proxy: "TcpProxy", pattern: bytes, clock: Callable[[], float] = time.monotonic) -> "PgTap":
        if proxy.tap is None:
            proxy.tap = cls(pattern, clock)
        return proxy.tap

    def connection(self) -> _Connection:
        return _Connection(self, next(self._ids))

    def _statement(self, conn: _Connection, body: bytes) -> None:
        keys = {m.decode(errors="replace") for m in self.pattern.findall(body)}
        if not keys:
            return
        t = self.clock()
        with self._lock:
            for key in sorted(keys):
                self.reads.append((t, key, conn.id))
                for hold in self._holds:
                    if hold.key == key and hold.take(t, conn.id):
                        conn.gates.append((hold, time.monotonic() + hold.max_seconds))
                if key in self._slow:
                    conn.gates.append((None, time.monotonic() + self._slow[key]))

    # --- for the grader ---
    def count(self, key: str, since: float = float("-inf")) -> int:
        with self._lock:
            return sum(1 for t, k, _ in self.reads if k == key and t >= since)

    def snapshot(self) -> list[tuple[float, str, int]]:
        with self._lock:
            return list(self.reads)

    def hold(self, key: str, n: int = 1, max_seconds: float = 10.0) -> Hold:
        hold = Hold(key, n, max_seconds)
        with self._lock:
            self._holds.append(hold)
        return hold

    def drop_hold(self, hold: Hold) -> None:
        hold.release()
        with self._lock:
            if hold in self._holds:
                self._holds.remove(hold)

    def slow(self, key: str, seconds: float | None) -> None:
        with self._lock:
            if seconds:
                self._slow[key] = seconds
            else:
                self._slow.pop(key, None)


def tap_of(run: Target) -> PgTap:
    tap = run.proxies["postgres"].tap
    if tap is None:
        raise RuntimeError("no PgTap attached to the postgres proxy (the scenario attaches it at start)")
    return tap


class TapFault(Fault):
    def __init__(self, key: str) -> None:
        super().__init__("postgres")
        self.key = key

    def needs(self) -> list[Need]:
        return [Need("proxy", "postgres")]

    def unavailable(self, run: Target) -> str | None:
        reason = super().unavailable(run)
        if reason is None and run.proxies["postgres"].tap is None:
            reason = "no PostgreSQL tap on the proxy"
        return reason


class HoldReads(TapFault):
    """The database's answers to the next `n` statements naming `key` are held until the grader
    releases them (or `max_seconds`): a miss that read the row, but fills the cache late.

    Probes the stale-set race (an update and its invalidation land while a miss holds an old row)
    and lock safety (a lock holder stuck mid-fill: killed, or overrunning its lock's TTL).
    Effective if at least one statement was held. Use as a context manager: `with f.active(run):`
    then `f.hold.wait_held()`, ..., `f.hold.release()`.
    """

    kind = "hold-reads"

    def __init__(self, key: str, n: int = 1, max_seconds: float = 10.0) -> None:
        super().__init__(key)
        self.n, self.max_seconds = n, max_seconds
        self.hold: Hold | None = None

    def inject(self, run: Target) -> None:
        self.hold = tap_of(run).hold(self.key, self.n, self.max_seconds)

    def heal(self, run: Target) -> None:
        if self.hold is not None:
            tap_of(run).drop_hold(self.hold)
            self.detail["held"] = len(self.hold.held)
            self.effective = bool(self.hold.held)

    def describe(self) -> str:
        return f"hold the database's answer to the next {self.n} read(s) of {self.key} (up to {self.max_seconds:g} s)"


class SlowReads(TapFault):
    """Every answer to a statement naming `key` is `ms` late while active (a slow fill, so that
    concurrent misses overlap). Effective if a statement naming `key` ran meanwhile."""

    kind = "slow-reads"

    def __init__(self, key: str, ms: int, seconds: float = 5.0) -> None:
        super().__init__(key)
        self.ms, self.seconds = ms, seconds

    def inject(self, run: Target) -> None:
        tap = tap_of(run)
        self._before = tap.count(self.key)
        tap.slow(self.key, self.ms / 1000)

    def hold(self, run: Target) -> None:
        time.sleep(self.seconds)

    def heal(self, run: Target) -> None:
        tap = tap_of(run)
        tap.slow(self.key, None)
        self.detail["reads"] = tap.count(self.key) - getattr(self, "_before", tap.count(self.key))
        self.effective = self.detail["reads"] > 0

    def describe(self) -> str:
        return f"answer every read of {self.key} {self.ms} ms late"
