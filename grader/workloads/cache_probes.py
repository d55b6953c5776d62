"""Probes of a read-through cache in front of PostgreSQL, for any lab with such a cache: each one
plays a moment the cache must survive and records what the grader saw (judged by grader/checks/cache.py).

They need: the catalog workload (clients of two or more instances of the service), the grader's
Redis observer (grader/observe/redis.py), the PostgreSQL tap on the run's proxy
(grader/nemesis/pgwire.py) and `key_of(id)`, the cache key the lab's contract names.

- `ttl_probe`: every key dropped, all read at once, their TTLs read back (observe ttl-probe);
- `stampede`: a hot key expired while its reads are slow, N readers at once (observe stampede);
- `kill_lock_holder`: a miss's answer held, readers queued on another instance, the holder SIGKILLed
  (observe lock-kill);
- `lock_overrun`: a first holder held past its lock's TTL, a second one taking it and held too, the
  first released, reads counted while the second is still mid-fill (observe lock-overrun);
- `stale_set`: a miss's answer held after its SELECT ran, the row updated and invalidated, then the
  miss let go (observe stale-set);
- `flush_reads`: the tap's statements per key since the last flush (observe db-reads).
"""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Callable, Sequence

from ..nemesis import Kill
from ..nemesis.pgwire import HoldReads, PgTap, SlowReads
from ..observe.redis import RedisObserver, observe_cache
from ..wait import WaitTimeout, wait_until
from .catalog import ID_PATTERN, Catalog

if TYPE_CHECKING:
    from ..runner import Run


LEASE_MS = 12_000  # the second holder's lock, kept alive while the overrun probe counts reads
OVERRUN_WINDOW = 3.0  # seconds of late reads counted (while that lock is certainly held)


def later(fn, *args, **kwargs) -> threading.Thread:
    t = threading.Thread(target=fn, args=args, kwargs=kwargs, daemon=True)
    t.start()
    return t


def wait_quietly(condition: Callable[[], object], timeout: float) -> bool:
    """Until `condition` holds (errors count as not yet); False after `timeout`."""
    try:
        return bool(wait_until(condition, timeout, "condition", ignore=(Exception,)))
    except WaitTimeout:
        return False


class CacheProbes:
    def __init__(self, run: "Run", catalog: Catalog, observer: RedisObserver, key_of: Callable[[str], str]) -> None:
        self.run, self.catalog, self.observer, self.key_of = run, catalog, observer, key_of
        self.tap = PgTap.attach(run.proxies["postgres"], ID_PATTERN, run.history.elapsed)
        self._flushed = 0

    def flush_reads(self) -> None:
        reads = self.tap.snapshot()
        self.run.history.observe("db-reads", reads=[[round(t, 4), k] for t, k, _ in reads[self._flushed:]])
        self._flushed = len(reads)

    def up_to_date(self, pids: Sequence[str]) -> bool:
        """Every key caches (or marks) at least the version the grader's writes were acknowledged with."""
        entries = self.observer.entries([self.key_of(p) for p in pids])
        return all((entries[self.key_of(p)]["version"] or 0) >= self.catalog.versions.get(p, 0) for p in pids)

    def ttl_probe(self, pids: Sequence[str]) -> None:
        for p in pids:
            self.observer.expire(self.key_of(p))
        self.catalog.concurrent_gets(pids, probe="ttl")
        observe_cache(self.run.history, "ttl-probe", self.observer, {p: self.key_of(p) for p in pids})

    def stampede(self, pid: str, readers: int, slow_ms: int) -> None:
        self.catalog.get(pid, probe="warm")
        with SlowReads(pid, slow_ms).active(self.run):
            self.observer.expire(self.key_of(pid))
            t0 = self.run.history.elapsed()
            self.catalog.stampede(pid, readers, probe="stampede")
            t1 = self.run.history.elapsed()
        self.run.history.observe("stampede", product=pid, t_expired=round(t0, 4), t_end=round(t1, 4),
                                 version=self.catalog.versions.get(pid))

    def kill_lock_holder(self, pid: str, holder: int, service: str, waiters: int) -> None:
        """The holder is a GET to instance `holder` (the process `service`); the waiters go to the next."""
        self.observer.expire(self.key_of(pid))
        fault = HoldReads(pid, 1, max_seconds=8)
        queued: list[threading.Thread] = []
        with fault.active(self.run) as running:
            if not running:
                return
            first = later(self.catalog.get, pid, holder, probe="lock-holder")
            if not fault.hold.wait_held(1, 5):
                self.run.note(f"lock-safety: no read of {pid} reached the database within 5 s of a miss")
                return
            other = (holder + 1) % len(self.catalog.clients)
            queued = [later(self.catalog.get, pid, other, probe="lock-waiter") for _ in range(waiters)]
            time.sleep(0.3)  # let them queue on the lock (pacing the probe, not waiting for a result)
            t_kill = self.run.history.elapsed()
            Kill(service).apply(self.run)  # restarted and healthy again when this returns
        self.run.history.observe("lock-kill", product=pid, t_kill=round(t_kill, 4))
        for t in [first, *queued]:
            t.join(15)

    def lock_overrun(self, pid: str, late_readers: int = 10) -> None:
        self.observer.expire(self.key_of(pid))
        first, second = HoldReads(pid, 1, max_seconds=10), HoldReads(pid, 1, max_seconds=10)
        stop = threading.Event()
        threads: list[threading.Thread] = []
        n = len(self.catalog.clients)
        with first.active(self.run) as running:
            if not running:
                return
            threads.append(later(self.catalog.get, pid, 0, probe="overrun-first"))
            if not first.hold.wait_held(1, 5):
                self.run.history.observe("lock-overrun", product=pid, reason="the first miss never reached the database")
                return
            with second.active(self.run):
                def knock() -> None:  # one request every 0.2 s: the first to find the lock expired takes it
                    while not stop.wait(0.2):
                        threads.append(later(self.catalog.get, pid, 1 % n, probe="overrun-wait"))

                knocker = later(knock)
                got = second.hold.wait_held(1, 6)
                stop.set()
                knocker.join(2)
                if not got:
                    self.run.history.observe("lock-overrun", product=pid, reason="no second lock holder within 6 s of "
                                             "the first one's read (a lock TTL > 6 s?)")
                    return
                t_first, t_second = first.hold.held[0][0], second.hold.held[0][0]
                # The second holder's lock must outlive the window, however slow this machine: keep
                # it alive (a longer lease; found by name: the contract puts locks under the prefix).
                leases = self.observer.extend_leases(self.run.ns.key(""), pid, self.key_of(pid), LEASE_MS)
                t_leased = self.run.history.elapsed()
                first.hold.release()
                threads[0].join(5)  # the first holder fills, then releases "its" lock
                self.observer.expire(self.key_of(pid))
                w0 = self.run.history.elapsed()
                if leases:
                    window = min(OVERRUN_WINDOW, t_leased + LEASE_MS / 1000 - 1 - w0)
                else:  # no lock found by name: stay well inside the lock's TTL as measured
                    window = min(1.0, 0.5 * (t_second - t_first))
                threads += [later(self.catalog.get, pid, i % n, probe="overrun-late") for i in range(late_readers)]
                wait_quietly(lambda: self.tap.count(pid, since=w0) > 0, window)
                w1 = self.run.history.elapsed()
        self.run.history.observe("lock-overrun", product=pid, t_second=round(t_second, 4), leases=leases,
                                 window=[round(w0, 4), round(w1, 4)], lock_ttl_seen=round(t_second - t_first, 3))
        for t in threads:
            t.join(15)

    def stale_set(self, pid: str) -> None:
        self.observer.expire(self.key_of(pid))
        fault = HoldReads(pid, 1, max_seconds=8)
        read_version = self.catalog.versions.get(pid, 0)
        with fault.active(self.run) as running:
            if not running:
                return
            miss = later(self.catalog.get, pid, 0, probe="slow-miss")
            if not fault.hold.wait_held(1, 5):
                self.run.note(f"stale-set: the miss of {pid} never reached the database")
                return
            self.catalog.put(pid, 1 % len(self.catalog.clients), probe="race-update")
            new = self.catalog.versions.get(pid, 0)
            landed = self.observer.wait_version(self.key_of(pid), new, 3)  # its invalidation is there
        miss.join(10)
        db_version = self.catalog.db_version(pid)
        if not landed:  # a slow invalidation may land only now; an old fill after it stays old for good
            self.observer.wait_version(self.key_of(pid), db_version or 0, 1.5)
        self.run.history.observe("stale-set", product=pid, read_version=read_version, db_version=db_version,
                                 cache_version=self.observer.version(self.key_of(pid)))
