"""Checkers for a read-through cache in front of a database (lab 3), pure functions of the history.

What they read (recorded by grader/scenarios/lab3.py with the grader's own clients):
- operations f="get" / f="put" (grader/workloads/catalog.py), with `probe` tags;
- `observe db-reads`: statements that named a product id, as the PostgreSQL tap saw them
  ([t, id] pairs; grader/nemesis/pgwire.py) - the database's load per key, never the service's word;
- `observe` of cache entries read with the grader's admin Redis client (grader/observe/redis.py):
  `ttl-probe`, `cache-sample`, `stale-set`, `final-cache`, and `final-db` rows;
- `observe stampede | lock-kill | lock-overrun`: when the grader expired a key, killed a lock
  holder, let a holder overrun its lock.
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from ..history import History, Op
from .generic import unsettled
from .result import CheckResult

FRESH_WITHIN = 10.0  # s: after a PUT is acknowledged, reads invoked this much later return its version or newer
STAMPEDE_MAX_READS = 1  # database reads of the hot key while N readers find it expired (a per-key lock) ...
MIN_LOCK_LIFETIME = 1.0  # s: ... per lock lifetime (a holder slower than its lock's TTL is followed by another)
LOCK_TTL_MAX = 3.0  # s: a lock's TTL (read by the grader while its holder is alive), so a dead holder's lock expires
ANSWERED_WITHIN = 15.0  # s: a killed holder's waiters are answered at all - far above any give-up (5 s) under load
JITTER_MIN = 0.05  # keys filled together: their TTLs spread over >= 5 % of the median TTL
OUTAGE_LATENCY = 5.0  # s: a read while Redis is down is answered within this (served from the database)
HIT_RATIO_WITHIN = 4.0  # s after Redis is back: the hit ratio (measured at the database) is >= MIN_HIT_RATIO
MIN_HIT_RATIO = 0.5


def db_reads(history: History) -> list[tuple[float, str]]:
    reads = []
    for e in history.observations("db-reads"):
        reads += [(float(t), str(k)) for t, k in e.data.get("reads", [])]
    return sorted(reads)


def reads_of(history: History, pid: str, t0: float, t1: float) -> list[float]:
    return [t for t, k in db_reads(history) if k == pid and t0 <= t <= t1]


def body(op: Op) -> dict:
    b = op.result.get("body")
    return b if isinstance(b, dict) else {}


def _ops(history: History, f: str, probe: str | None = None) -> list[Op]:
    return [op for op in history.ops(f) if probe is None or op.invoke.get("probe") == probe]


def answered_version(op: Op) -> int | None:
    """The version a GET answered: the body's, or 0 for a 404 (nothing yet: a product created since
    must not stay "not found" - a negative cache entry is invalidated too)."""
    if op.type == "ok" and isinstance(body(op).get("version"), int):
        return body(op)["version"]
    if op.result.get("status") == 404:
        return 0
    return None


def acked_versions(history: History) -> dict[str, list[tuple[float, int]]]:
    acked: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for op in _ops(history, "put"):
        if op.type == "ok" and isinstance(body(op).get("version"), int):
            acked[op.invoke.get("product")].append((op.t_complete, body(op)["version"]))
    return acked


# --- freshness --------------------------------------------------------------------------------

def check_freshness(history: History, **args: Any) -> CheckResult:
    """Reads invoked more than FRESH_WITHIN after a PUT was acknowledged return its version or a
    newer one; the cached version of a key (sampled by the grader) never goes back."""
    acked = acked_versions(history)
    evidence, judged, worst, exposed = [], 0, 0.0, 0
    for op in _ops(history, "get"):
        v = answered_version(op)
        if v is None:
            continue
        judged += 1
        pid = op.invoke.get("product")
        exposed += any(t < op.t_invoke - FRESH_WITHIN for t, _ in acked.get(pid, []))
        newer = [(t, av) for t, av in acked.get(pid, []) if av > v and t < op.t_invoke]
        if not newer:
            continue
        t_first = min(t for t, _ in newer)
        worst = max(worst, op.t_invoke - t_first)
        if op.t_invoke - t_first > FRESH_WITHIN:
            answer = "404 (not found)" if v == 0 else f"version {v}"
            evidence.append(f"GET {pid} at t={op.t_invoke:.2f}s (request #{op.id}) returned {answer}; version "
                            f"{max(av for _, av in newer)} had been acknowledged at t={t_first:.2f}s "
                            f"({op.t_invoke - t_first:.1f} s earlier, bound {FRESH_WITHIN:g} s)")
    regressions = []
    last: dict[str, tuple[float, int]] = {}
    for e in history.observations("cache-sample"):
        for pid, entry in (e.data.get("entries") or {}).items():
            v = entry.get("version")
            if not isinstance(v, int):
                continue
            if pid in last and v < last[pid][1]:
                regressions.append(f"cached {pid} went back from version {last[pid][1]} (t={last[pid][0]:.2f}s) to {v} "
                                   f"(t={e.t:.2f}s): an old change event or an old fill overwrote a newer entry")
            last[pid] = (e.t, v)
    if not judged:
        return CheckResult.error(message="no read was answered (the run did not get there)", **args)
    if not exposed and not regressions:
        return CheckResult.skip(args["id"], args["title"], args["max_points"],
                                f"not judged: none of the {judged} answered reads came more than {FRESH_WITHIN:g} s after "
                                f"a write of its product was acknowledged")
    evidence = regressions[:5] + evidence
    samples = len(history.observations("cache-sample"))
    return CheckResult.verdict(
        passed=not evidence,
        message=f"{judged} reads judged, worst staleness {worst:.2f} s (bound {FRESH_WITHIN:g} s); {samples} cache "
                f"samples, {len(regressions)} version regressions", evidence=evidence, **args)


# --- stampede and TTL jitter ---------------------------------------------------------------------

def lock_lifetime(history: History) -> float:
    """How long a lock lived before a second holder took it (the overrun probe measured it; a
    holder slower than its lock's TTL is followed by another read - by design). At least 1 s."""
    overrun = history.last_observation("lock-overrun") or {}
    return max(0.8 * float(overrun.get("lock_ttl_seen") or 0), MIN_LOCK_LIFETIME)


def check_stampede(history: History, **args: Any) -> CheckResult:
    """At most STAMPEDE_MAX_READS read of the hot key per lock lifetime while its readers wait."""
    runs = history.observations("stampede")
    if not runs:
        return CheckResult.error(message="the stampede was never played (the run did not get there)", **args)
    evidence, lines = [], []
    spacing = lock_lifetime(history)
    for e in runs:
        d = e.data
        pid, t0, t1 = d["product"], d["t_expired"], d["t_end"]
        reads = reads_of(history, pid, t0, t1)
        lifetimes: list[list[float]] = []  # reads grouped by lock lifetime: a new group once the last one ran out
        for t in reads:
            if lifetimes and t - lifetimes[-1][0] < spacing:
                lifetimes[-1].append(t)
            else:
                lifetimes.append([t])
        worst = max((len(g) for g in lifetimes), default=0)
        ops = [op for op in _ops(history, "get", "stampede") if op.invoke.get("product") == pid]
        bad = [op for op in ops if op.type != "ok" or body(op).get("version") != d["version"]]
        lines.append(f"{len(ops)} readers of {pid}: {len(reads)} database read(s)"
                     + (f" over {len(lifetimes)} lock lifetimes of {spacing:.1f} s" if len(lifetimes) > 1 else ""))
        if worst > STAMPEDE_MAX_READS:
            group = max(lifetimes, key=len)
            evidence.append(f"{len(ops)} concurrent GETs of {pid} after its key expired (t={t0:.2f}s): {len(reads)} "
                            f"statements for {pid} reached the database by t={t1:.2f}s, {worst} of them within "
                            f"{group[-1] - group[0]:.2f} s from t={group[0]:.2f}s (at most {STAMPEDE_MAX_READS} per "
                            f"lock lifetime, {spacing:.1f} s here, with a per-key lock)")
        for op in bad[:3]:
            evidence.append(f"GET {pid} (request #{op.id}) during the stampede: {op.result.get('status') or 'no answer'} "
                            f"version {body(op).get('version')} (expected 200 with version {d['version']})")
    return CheckResult.verdict(passed=not evidence, message="; ".join(lines), evidence=evidence, **args)


def check_ttl_jitter(history: History, **args: Any) -> CheckResult:
    probe = history.last_observation("ttl-probe")
    if not probe or "entries" not in probe:
        return CheckResult.error(message="the TTL probe was never played or Redis was unreadable", **args)
    filled = {op.invoke.get("product"): (op.t_invoke + op.t_complete) / 2 for op in _ops(history, "get", "ttl")
              if op.type == "ok"}
    ttls, evidence = [], []
    for pid, entry in probe["entries"].items():
        if pid not in filled:
            continue
        if entry["pttl_ms"] == -1:
            evidence.append(f"{pid}: cached without a TTL (an entry nobody invalidates stays wrong for ever)")
        elif entry["pttl_ms"] >= 0:
            ttls.append(probe["t_read"] + entry["pttl_ms"] / 1000 - filled[pid])
    if len(ttls) < 5:
        sent = len(_ops(history, "get", "ttl"))
        return CheckResult.verdict(passed=False, message=f"only {len(ttls)} of {sent} keys read at once were answered "
                                   f"and cached with a TTL", evidence=evidence or [
                                       f"{sent - len(filled)} of the probe's {sent} GETs failed; the others did not "
                                       f"leave an entry with a TTL"], **args)
    median, spread = statistics.median(ttls), max(ttls) - min(ttls)
    need = JITTER_MIN * median
    if spread < need:
        evidence.append(f"{len(ttls)} keys filled within {max(filled.values()) - min(filled.values()):.2f} s got TTLs "
                        f"from {min(ttls):.2f} s to {max(ttls):.2f} s: spread {spread:.2f} s < {need:.2f} s "
                        f"({JITTER_MIN:.0%} of the median): they expire together (synchronized expiry)")
    return CheckResult.verdict(passed=not evidence,
                               message=f"{len(ttls)} keys filled together: TTL median {median:.1f} s, spread {spread:.2f} s",
                               evidence=evidence, **args)


# --- lock safety ----------------------------------------------------------------------------------

def _keys(keys: list[str]) -> str:
    return ", ".join(keys[:2]) + (f" (+{len(keys) - 2})" if len(keys) > 2 else "")


def check_lock_safety(history: History, **args: Any) -> CheckResult:
    """Judged by what the grader saw of the locks themselves (keys under the run's prefix besides
    the entries, read with its own client), never by how long something took on this machine:
    - a SIGKILLed holder's lock has a TTL of at most LOCK_TTL_MAX, and its waiters are answered;
    - a miss of a second key does not wait for the first key's lock (a lock per key);
    - a holder that overran its lock's TTL does not delete (or overwrite) its successor's lock,
      which the grader kept alive and watched while the first one finished."""
    kill = history.last_observation("lock-kill")
    two = history.last_observation("two-keys")
    overrun = history.last_observation("lock-overrun")
    if not kill and not two and not overrun:
        return CheckResult.error(message="no lock probe was played (the run did not get there)", **args)
    evidence, lines, judged = [], [], 0
    if kill:
        judged += 1
        pid, t_kill = kill["product"], kill["t_kill"]
        waiters = [op for op in _ops(history, "get", "lock-waiter") if op.invoke.get("product") == pid]
        late = [op for op in waiters if op.type != "ok" or op.t_complete is None or op.t_complete - t_kill > ANSWERED_WITHIN]
        done = [op.t_complete - t_kill for op in waiters if op.type == "ok" and op.t_complete is not None]
        lines.append(f"{len(waiters) - len(late)} of {len(waiters)} readers waiting on the killed holder's lock answered "
                     f"(last after {max(done, default=0):.2f} s)")
        for op in late[:4]:
            what = (f"{op.result.get('status') or 'no answer'}" if op.type != "ok" else
                    f"answered {op.t_complete - t_kill:.2f} s after the kill")
            evidence.append(f"GET {pid} (request #{op.id}) waiting while the lock holder was SIGKILLed mid-fill at "
                            f"t={t_kill:.2f}s: {what} (bound {ANSWERED_WITHIN:g} s)")
        for key, pttl in sorted((kill.get("locks") or {}).items()):
            if pttl == -1:
                evidence.append(f"the lock {key} of the holder SIGKILLed at t={t_kill:.2f}s has no TTL (PTTL -1): a dead "
                                f"holder's lock never expires and every later miss of {pid} waits for nothing")
            elif pttl > LOCK_TTL_MAX * 1000:
                evidence.append(f"the lock {key} of the holder SIGKILLed at t={t_kill:.2f}s had {pttl} ms left (> "
                                f"{LOCK_TTL_MAX:g} s): its waiters wait that long for a dead holder")
    if two and "reason" not in two:
        judged += 1
        pid, other, locks, others = two["product"], two["other"], two.get("locks") or [], two.get("other_locks") or []
        if not locks:
            lines.append(f"two keys not judged: the miss of {pid} took no lock the grader could see")
        elif two.get("t_read") is None:
            evidence.append(f"while the holder of {pid}'s lock ({_keys(locks)}) was slow (its database read held), a "
                            f"miss of {other} (t={two['t_other']:.2f}s) did not read the database within 10 s: it waits "
                            f"for another product's lock (one lock for every product?)")
        elif not others:
            evidence.append(f"while the holder of {pid}'s lock ({_keys(locks)}) was slow (its database read held), a "
                            f"miss of {other} (t={two['t_other']:.2f}s) read the database only at t={two['t_read']:.2f}s "
                            f"and under no lock of its own (no new lock key appeared; {_keys(locks)} was still held): "
                            f"it waited for "
                            f"{pid}'s lock - one lock for every product serializes every miss behind the slowest")
        else:
            lines.append(f"a miss of {other} took its own lock while {pid}'s holder was slow")
    elif two:
        lines.append(f"two keys not judged: {two['reason']}")
    if overrun and "t_second" in overrun:
        pid2, locks, lost = overrun["product"], overrun.get("locks") or [], overrun.get("lost")
        if not locks:
            lines.append(f"overrun not judged: the second holder of {pid2} held no lock the grader could see (a key "
                         f"under the prefix besides the entries)")
        else:
            judged += 1
            lines.append(f"overrun: the second holder's lock {'was ' + lost['how'] if lost else 'stayed'} while the first "
                         f"one finished")
        if lost:
            w0 = overrun["window"][0]
            extra = reads_of(history, pid2, lost["t"], overrun["window"][1])
            after = (f"; then {len(extra)} more read(s) of {pid2} reached the database (t="
                     f"{', '.join(f'{t:.2f}' for t in extra[:3])}s) while the second holder was mid-fill") if extra else ""
            what = ("deleted" if lost["how"] == "deleted" else f"overwritten (it held {str(lost.get('now'))[:40]!r})")
            evidence.append(f"{pid2}: the first lock holder overran its lock's TTL and a second request took the lock "
                            f"{lost['key']} (t={overrun['t_second']:.2f}s; the grader kept it alive since); the first one "
                            f"finished (answered by t={w0:.2f}s) and the lock was {what} at t={lost['t']:.2f}s while its "
                            f"holder was still mid-fill: a release that does not check its own token deletes a lock it "
                            f"no longer holds{after}")
    elif overrun:
        lines.append(f"overrun not judged: {overrun.get('reason')}")
    if not judged:
        return CheckResult.skip(args["id"], args["title"], args["max_points"],
                                "not judged: " + "; ".join(lines or ["no lock probe got to its event"]))
    return CheckResult.verdict(passed=not evidence, message="; ".join(lines), evidence=evidence, **args)


# --- the stale-set race and the final state ---------------------------------------------------------

def final_mismatches(history: History) -> tuple[list[str], int]:
    cache = history.last_observation("final-cache") or {}
    db = history.last_observation("final-db") or {}
    rows = {r[0]: r for r in db.get("products", [])}
    out = []
    for pid, entry in (cache.get("entries") or {}).items():
        v = entry.get("version")
        if v is None or pid not in rows:
            continue
        _, name, price, db_version = rows[pid]
        if v != db_version:
            out.append(f"{pid}: the cache holds version {v}, the database version {db_version} "
                       f"(pttl {entry['pttl_ms']} ms) after quiescence")
        elif '"name"' in (entry.get("raw") or "") and (f'"{name}"' not in entry["raw"]):
            out.append(f"{pid}: the cache holds version {v} with other data than the database ({entry['raw'][:80]})")
    return out, len(rows)


def check_stale_set_race(history: History, **args: Any) -> CheckResult:
    probes = history.observations("stale-set")
    if not probes:
        return CheckResult.error(message="the stale-set race was never played (the run did not get there)", **args)
    evidence = []
    for e in probes:
        d = e.data
        if d.get("cache_version") is not None and d.get("cache_version") != d.get("db_version"):
            evidence.append(f"{d['product']}: a miss read version {d['read_version']} (its answer held by the grader), "
                            f"then version {d['db_version']} was committed and invalidated; once the slow miss filled, "
                            f"the cache held version {d['cache_version']} while the database has {d['db_version']} "
                            f"(t={e.t:.2f}s): the old value went in after the invalidation")
    final, n = final_mismatches(history)
    if not history.last_observation("final-cache"):
        return CheckResult.error(message="the final cache state was never read (the run did not get there)", **args)
    evidence += final
    waiting = unsettled(history)  # the versions were still moving when the grader compared them
    if final:
        evidence += waiting
    return CheckResult.verdict(passed=not evidence,
                               message=f"{len(probes)} slow misses interleaved with an update and its invalidation; "
                                       f"{n} products compared after quiescence, {len(final)} differ", evidence=evidence,
                               **args)


# --- Redis outage ------------------------------------------------------------------------------

HANG = "one-way-cut"  # Redis takes requests and never answers: only a client's own timeouts end the wait
STUCK_EARLY = 1.5  # s: reads sent this early in a hang that are answered only at its heal were stuck on Redis


def outage_windows(history: History) -> list[tuple[str, float, float]]:
    from ..nemesis import fault_events

    return [(f"{f['fault']} {f['target']}", f["start"], f["end"]) for f in fault_events(history)
            if f["target"] == "redis" and f["effective"] and f["start"] is not None and f["end"] is not None]


def stuck_in_hang(history: History, t0: float, t1: float) -> tuple[list[Op], list[Op]]:
    """Reads sent in the first STUCK_EARLY s of a Redis hang, and those of them answered only once
    the grader healed it (the heal resets the connections: a client without a socket timeout waits
    for exactly that). An event, not a duration: a slow machine answers late, not at the heal."""
    early = [op for op in _ops(history, "get") if t0 <= op.t_invoke <= t0 + STUCK_EARLY]
    stuck = [op for op in early if op.t_complete is not None and op.t_complete >= t1]
    return early, stuck


def check_redis_outage(history: History, **args: Any) -> CheckResult:
    windows = outage_windows(history)
    evidence, lines = [], []
    reads = db_reads(history)
    for name, t0, t1 in windows:
        during = [op for op in _ops(history, "get") if t0 <= op.t_invoke <= t1 + 0.5]
        bad = [op for op in during if op.type != "ok" and op.result.get("status") != 404]
        slow = [op for op in during if op.type == "ok" and op.t_complete - op.t_invoke > OUTAGE_LATENCY]
        for op in bad[:3]:
            evidence.append(f"GET {op.invoke.get('product')} (request #{op.id}) during {name} "
                            f"(t={t0:.1f}-{t1:.1f}s): {op.result.get('status') or 'no answer'} "
                            f"{str(op.result.get('body') or op.result.get('error') or '')[:100]}")
        if name.startswith(HANG):
            slow = []  # judged by the heal, not by a clock
            early, stuck = stuck_in_hang(history, t0, t1)
            if early and 2 * len(stuck) > len(early):
                op = stuck[0]
                evidence.append(f"while Redis took requests and never answered ({name}, t={t0:.1f}-{t1:.1f}s), "
                                f"{len(stuck)} of {len(early)} GETs sent in its first {STUCK_EARLY:g} s were answered only "
                                f"when the grader healed the path (e.g. GET {op.invoke.get('product')}, request #{op.id}: "
                                f"sent t={op.t_invoke:.2f}s, answered t={op.t_complete:.2f}s): the Redis client has no "
                                f"socket timeout (services.common.cache.redis_client sets one)")
        for op in slow[:2]:
            evidence.append(f"GET {op.invoke.get('product')} (request #{op.id}) during {name}: answered after "
                            f"{op.t_complete - op.t_invoke:.2f} s (bound {OUTAGE_LATENCY:g} s: fail fast, serve from the "
                            f"database)")
        # recovery: the hit ratio in the 2 s from HIT_RATIO_WITHIN after the end, measured at the database
        r0, r1 = t1 + HIT_RATIO_WITHIN, t1 + HIT_RATIO_WITHIN + 2.0
        gets = [op for op in _ops(history, "get", "load") if r0 <= op.t_invoke <= r1]
        puts = [op for op in _ops(history, "put") if r0 <= op.t_invoke <= r1]
        n_db = sum(1 for t, _ in reads if r0 <= t <= r1)
        misses = max(n_db - 2 * len(puts), 0)  # a PUT's statements name its id too
        ratio = 1 - misses / len(gets) if gets else None
        lines.append(f"{name}: {len(during)} reads, {len(bad)} errors"
                     + (f", hit ratio {ratio:.0%} {HIT_RATIO_WITHIN:g} s after" if ratio is not None else ""))
        if ratio is not None and ratio < MIN_HIT_RATIO:
            evidence.append(f"after {name} ended (t={t1:.1f}s): {len(gets)} reads at t={r0:.1f}-{r1:.1f}s caused "
                            f"{misses} database reads (hit ratio {ratio:.0%} < {MIN_HIT_RATIO:.0%}): the cache was not used "
                            f"again once Redis was back")
        if not during:
            evidence.append(f"no read was sent during {name} (a grader problem)")
    if not windows:
        return CheckResult.error(message="Redis was never taken away (the run did not get there)", **args)
    return CheckResult.verdict(passed=not evidence, message="; ".join(lines), evidence=evidence, **args)


# --- traces -----------------------------------------------------------------------------------------

def cache_trace_check(services: tuple[str, ...], secret_of):
    """The `traces` check of a cached read API: a traced miss has the SERVER span (cache.hit=false)
    with a Redis CLIENT span and a PostgreSQL CLIENT span below it; a traced hit (cache.hit=true) has
    a Redis CLIENT span and no PostgreSQL one; every span follows the conventions (database: CLIENT,
    db.system.name); no secret in any span; the spans survive a SIGTERM."""
    from ..checks.tracing import wall_t0_ns
    from ..nemesis import fault_events
    from ..otlp import spans_from_history
    from ..report.waterfall import faults_in_span_clock
    from ..traces import (Operation, Sel, check_no_secret_leaks, check_semantic_conventions,
                          check_spans_after_shutdown, combine)
    from ..traces.assertions import OperationSpans
    from ..traces.model import SpanIndex

    server = Sel(kind="SERVER")
    redis_span = Sel(kind="CLIENT", attrs={"db.system.name": lambda v: v == "redis"})
    pg_span = Sel(kind="CLIENT", attrs={"db.system.name": lambda v: v == "postgresql"})
    legacy = (Sel(kind="CLIENT", attrs={"db.system": "redis"}), Sel(kind="CLIENT", attrs={"db.system": "postgresql"}))

    def check(history: History, **args) -> CheckResult:
        spans = spans_from_history(history)
        index = SpanIndex(spans)
        faults = faults_in_span_clock(fault_events(history), wall_t0_ns(history))
        sub = {"max_points": args["max_points"]}
        probes = [(op, op.invoke.get("probe")) for op in history.ops("get")
                  if op.invoke.get("probe") in ("trace-miss", "trace-hit") and op.type == "ok"]
        if not probes:
            return CheckResult.error(message="no traced read was answered (the run did not get there)", **args)
        failed = []
        for op, probe in probes:
            o = OperationSpans(index, op.invoke["trace_id"], f"{probe[6:]} GET {op.invoke.get('product')} (#{op.id})")
            roots = [s for s in o.select(server) if s.parent_span_id == op.invoke.get("parent_span_id")]
            if not roots:
                o.fail(f"no SERVER span continuing the request's traceparent (spans: {len(o.spans)})")
            else:
                root = roots[0]
                want = probe == "trace-hit"
                if root.attr("cache.hit") is not want:
                    o.fail(f"{root.short()}: cache.hit={root.attr('cache.hit')!r}, expected {want}")
                below = [s for s in o.spans if s is not root and any(u.span_id == root.span_id for u in index.upstream(s, False))]
                n_redis = len(redis_span(below)) + len(legacy[0](below))
                n_pg = len(pg_span(below)) + len(legacy[1](below))
                if not n_redis:
                    o.fail("no CLIENT span with db.system.name=redis below the SERVER span")
                if probe == "trace-miss" and not n_pg:
                    o.fail("a miss without a CLIENT span with db.system.name=postgresql below the SERVER span")
                if probe == "trace-hit" and n_pg:
                    o.fail(f"a hit with {n_pg} PostgreSQL CLIENT span(s)")
            if not o.ok:
                failed.append(o)
        shape = CheckResult.verdict(args["id"], "a miss and a hit, span by span", args["max_points"], not failed,
                                    f"{len(probes) - len(failed)} of {len(probes)} traced reads have the expected spans",
                                    [o.evidence(faults, excerpt=i < 3) for i, o in enumerate(failed)],
                                    "Set cache.hit on the SERVER span; wrap each Redis and PostgreSQL call in a CLIENT "
                                    "span with db.system.name (services.common.cache.client_span).")
        ops = [Operation(f"GET #{op.id}", op.invoke["trace_id"], op.invoke.get("parent_span_id", ""))
               for op, _ in probes]
        results = [shape,
                   check_semantic_conventions(spans, services=list(services), title="span kinds and attributes",
                                              required=[Sel(service=services[0], kind="SERVER"),
                                                        Sel(service=services[0], kind="CLIENT")], **sub),
                   check_no_secret_leaks(spans, secret_of(history), title="no secret in any span", **sub)]
        if history.last_observation("shutdown"):
            results.append(check_spans_after_shutdown(spans, ops, [Sel(service=services[0])], faults=faults,
                                                      title="spans flushed on SIGTERM", **sub))
        return combine(args["id"], args["title"], args["max_points"], results, hint=args.get("hint"))

    return check
