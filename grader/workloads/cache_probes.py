"""Probes of a read-through cache in front of PostgreSQL, for any lab with such a cache: each one
plays a moment the cache must survive and records what the grader saw (judged by grader/checks/cache.py).

They need: the catalog workload (clients of two or more instances of the service), the grader's
Redis observer (grader/observe/redis.py), the PostgreSQL tap on the run's proxy
(grader/nemesis/pgwire.py) and `key_of(id)`, the cache key the lab's contract names.

- `ttl_probe`: every key dropped, all read at once, their TTLs read back (observe ttl-probe);
- `stampede`: a hot key expired while its reads are slow, N readers at once (observe stampede);
- `kill_lock_holder`: a miss's answer held, readers queued on another instance, the holder SIGKILLed
  (observe lock-kill);
- `separate_locks`: a miss of one key held at the database, a miss of another key sent: it must
  read the database under a lock of its own, not wait for the first one's (observe two-keys);
- `lock_overrun`: a first holder held past its lock's TTL, a second one taking it and held too; the
  grader keeps the second one's lock alive and watches it while the first finishes and releases
  (observe lock-overrun: was that lock deleted or replaced, and when);
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


LEASE_MS = 12_000  # the second holder's lock, kept alive (renewed) while the overrun probe watches it
DELETED_WITHIN = 1.0  # s after the first holder answered: its release (before its answer) has happened


class LockWatcher:
    """Finds the locks a submission takes while it runs (keys under `prefix`, besides the entries,
    that were not in `before`), notes when each was first seen, and keeps each one alive (PEXPIRE,
    renewed): a lock seen once cannot expire under a slow grader, so which locks existed when is
    an event, not a race with the lock's TTL."""

    def __init__(self, probes: "CacheProbes", before: dict[str, dict]) -> None:
        self.probes, self.before = probes, before
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = later(self._watch)

    def scan(self) -> dict[str, float]:
        try:
            found = self.probes.locks_since(self.before)
        except Exception:  # the admin client cannot read: the next round
            return self.seen
        now = self.probes.run.history.elapsed()
        for key in found:
            self.seen.setdefault(key, round(now, 4))
            try:
                self.probes.observer.client.pexpire(key, LEASE_MS)
            except Exception:
                pass
        return self.seen

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            self.scan()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class LeaseKeeper:
    """Keeps a holder's lock keys alive (PEXPIRE, renewed) and notes the first moment one of them
    is gone or holds another value: only a DEL or a SET by someone else does that, never time -
    so what it sees does not depend on how loaded the machine is."""

    def __init__(self, observer: RedisObserver, locks: dict[str, str | None], clock: Callable[[], float]) -> None:
        self.observer, self.locks, self.clock = observer, locks, clock
        self.lost: dict | None = None
        self._stop = threading.Event()
        self._thread = later(self._watch)

    def _watch(self) -> None:
        client = self.observer.client
        while self.lost is None and not self._stop.is_set():
            for key, value in self.locks.items():
                try:
                    pipe = client.pipeline(transaction=True)
                    pipe.get(key)
                    pipe.pexpire(key, LEASE_MS)
                    now, extended = pipe.execute()
                except Exception:  # the admin client cannot read: nothing is concluded
                    continue
                now = now.decode(errors="replace") if now is not None else None
                if not extended or now != value:
                    self.lost = {"key": key, "t": round(self.clock(), 4), "now": now,
                                 "how": "deleted" if now is None else "replaced"}
                    return
            self._stop.wait(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


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

    def locks_since(self, before: dict[str, dict]) -> dict[str, dict]:
        """Keys under the run's prefix, besides the cache entries, that appeared or changed value
        since `before` (a snapshot of `other_keys`): the locks taken meanwhile, whatever their names."""
        now = self.observer.other_keys(self.run.ns.key(""), self.key_of(""))
        return {k: e for k, e in now.items() if k not in before or before[k]["raw"] != e["raw"]}

    def keep_alive(self, locks: dict[str, dict]) -> dict[str, str | None]:
        """PEXPIRE each lock at once (right after it was read: its own TTL may be nearly over on a
        slow machine); the ones still there, with their values."""
        kept = {}
        for key, e in locks.items():
            try:
                if self.observer.client.pexpire(key, LEASE_MS):
                    kept[key] = e["raw"]
            except Exception:  # unreadable now: not watched
                pass
        return kept

    def other_keys(self) -> dict[str, dict]:
        return self.observer.other_keys(self.run.ns.key(""), self.key_of(""))

    def separate_locks(self, pid: str, other: str) -> None:
        """A miss of `pid` held at the database (its holder slow, its lock kept alive), then a miss
        of `other`: it must read the database under a lock of its own, not wait for `pid`'s."""
        for p in (pid, other):
            self.observer.expire(self.key_of(p))
        before = self.other_keys()
        first, second = HoldReads(pid, 1, max_seconds=15), HoldReads(other, 1, max_seconds=15)
        threads = []
        with first.active(self.run) as running, second.active(self.run):
            if not running:
                return
            watcher = LockWatcher(self, before)
            try:
                threads.append(later(self.catalog.get, pid, 0, probe="two-keys"))
                if not first.hold.wait_held(1, 5):
                    self.run.history.observe("two-keys", product=pid, other=other,
                                             reason=f"no read of {pid} reached the database within 5 s of a miss")
                    return
                locks = sorted(watcher.scan())
                t_other = self.run.history.elapsed()
                threads.append(later(self.catalog.get, other, 1 % len(self.catalog.clients), probe="two-keys"))
                read = second.hold.wait_held(1, 10)  # as a lock holder of its own, or after giving up waiting
                seen = watcher.scan() if read else {}
                t_read = second.hold.held[0][0] if read else None
            finally:
                watcher.stop()
        self.run.history.observe("two-keys", product=pid, other=other, locks=locks, t_other=round(t_other, 4),
                                 other_locks=sorted(k for k in seen if k not in locks), t_read=t_read and round(t_read, 4))
        for t in threads:
            t.join(15)

    def kill_lock_holder(self, pid: str, holder: int, service: str, waiters: int) -> None:
        """The holder is a GET to instance `holder` (the process `service`); the waiters go to the next."""
        self.observer.expire(self.key_of(pid))
        before = self.other_keys()
        fault = HoldReads(pid, 1, max_seconds=8)
        queued: list[threading.Thread] = []
        with fault.active(self.run) as running:
            if not running:
                return
            first = later(self.catalog.get, pid, holder, probe="lock-holder")
            if not fault.hold.wait_held(1, 5):
                self.run.note(f"lock-safety: no read of {pid} reached the database within 5 s of a miss")
                return
            locks = {k: e["pttl_ms"] for k, e in self.locks_since(before).items()}  # the holder's lock, its TTL
            other = (holder + 1) % len(self.catalog.clients)
            queued = [later(self.catalog.get, pid, other, probe="lock-waiter") for _ in range(waiters)]
            time.sleep(0.3)  # let them queue on the lock (pacing the probe, not waiting for a result)
            t_kill = self.run.history.elapsed()
            Kill(service).apply(self.run)  # restarted and healthy again when this returns
        self.run.history.observe("lock-kill", product=pid, t_kill=round(t_kill, 4), locks=locks)
        for t in [first, *queued]:
            t.join(15)

    def lock_overrun(self, pid: str, late_readers: int = 10) -> None:
        self.observer.expire(self.key_of(pid))
        before = self.other_keys()
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
                # The second holder's lock: kept alive and watched while the first one finishes and
                # releases. It can only go if someone deletes or overwrites it.
                locks = self.keep_alive(self.locks_since(before))
                keeper = LeaseKeeper(self.observer, locks, self.run.history.elapsed)
                first.hold.release()
                threads[0].join(5)  # the first holder fills, then releases "its" lock, then answers
                self.observer.expire(self.key_of(pid))
                w0 = self.run.history.elapsed()
                threads += [later(self.catalog.get, pid, i % n, probe="overrun-late") for i in range(late_readers)]
                wait_quietly(lambda: keeper.lost, DELETED_WITHIN)
                keeper.stop()
                w1 = self.run.history.elapsed()
        self.run.history.observe("lock-overrun", product=pid, t_second=round(t_second, 4), locks=sorted(locks),
                                 lost=keeper.lost, window=[round(w0, 4), round(w1, 4)],
                                 lock_ttl_seen=round(t_second - t_first, 3))
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
