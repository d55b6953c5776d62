"""Lab 3: a Redis cache in front of PostgreSQL - cache-aside, invalidation from change events,
stampedes, the stale-set race, degraded mode.

Every gap between an effect and what the cache says about it in the reference design, and the
fault that probes it (the database tap - grader/nemesis/pgwire.py - counts the statements naming
each product and holds or slows the database's answers to them, without the service's help):

  key expires under load    the grader expires a hot key (admin DEL) while the database answers its
                            reads 400 ms late (SlowReads), and 200 readers ask at once: the statements
                            naming it must be <= 1 per lock lifetime (a per-key lock)
  keys filled together      all keys dropped, then read at once: their TTLs (PTTL, admin client) must
                            spread (jitter), or they all expire - and stampede - together
  one key's holder slow    its read is held (HoldReads); a miss of another key must read the database
                            under a lock of its own (the grader sees the locks: keys under the prefix)
  lock holder dies mid-fill its read is held (HoldReads), readers queue on the other instance,
                            the holder is SIGKILLed (Kill): its lock has a TTL <= 3 s (read by the
                            grader), and the readers are answered
  holder overruns its TTL   a first holder's read is held past its lock's TTL, a second request takes
                            the lock and is held too; the grader keeps that lock alive and watches it
                            while the first one finishes: it must not be deleted (release by token)
  slow miss vs update       a miss's answer is held after its SELECT ran; the row is updated and the
                            invalidation lands; then the miss fills: the cache must not keep the old
                            version (versioned sets / leases) - and after quiescence cache == database
  update -> invalidation    the invalidator is SIGKILLed just after each boundary of its unit of work
                            (BoundarySweep: its first Redis write of a batch - before the advance -
                            and its slot advance): the changes are applied again (a replay) and
                            must not put an older version back; reads 10 s after an acknowledged
                            update return it or newer (freshness; the stale-set probes' keys
                            are read again 12 s into the load)
  Redis                     cut off through the proxy (Cut) and killed and restarted empty
                            (RestartServer, its ACL user re-provisioned): no 5xx, answers within 5 s,
                            and the hit ratio (measured at the database) is back >= 50 % 4 s later;
                            then hanging (OneWayCut: requests in, no answers): reads sent early in it
                            must not wait for the heal (a client without socket timeouts does)
  created after a 404       products read before they exist (404s a cache may remember), then
                            created: a read 12 s later must find them (freshness, a 404 is version 0)
  traces                    a traced miss and hit: SERVER span with cache.hit, Redis and PostgreSQL
                            CLIENT spans (db.system.name); spans flushed on SIGTERM
"""
from __future__ import annotations

import threading
import time

import psycopg

from ..checks.cache import (cache_trace_check, check_freshness, check_lock_safety, check_redis_outage,
                            check_stale_set_race, check_stampede, check_ttl_jitter)
from ..checks.tracing import run_secret
from ..nemesis import BoundarySweep, CrashPoint, Cut, Kill, OneWayCut, RestartServer
from ..nemesis.pgwire import HoldReads, PgTap, SlowReads
from ..observe import observe_rows, quiesce
from ..observe.redis import RedisObserver, observe_cache, versions_stable
from ..runner import Run
from ..scenario import At, Check, Params, Phase, PhaseContext, Scenario, play
from ..stack.credentials import provision_redis
from ..workloads.cache_probes import CacheProbes, later, wait_quietly
from ..workloads.catalog import ID_PATTERN, Catalog, catalog_metrics, product_id

P = Params(products=40, hot=4, readers=200, waiters=20, slow_ms=400, load_seconds=25, read_rate=60, write_rate=4,
           stale_probes=2, late_reads_after=12.0, fallback_after=8.0, sweep_seconds=15, quiesce_timeout=15,
           redis_cut=3.0, redis_down=1.0, redis_hang=5.0, absent=2, absent_read_after=12.0)
SERVICES = ("catalog", "catalog_b")


# --- the run's objects -------------------------------------------------------------------------

def ids(run: Run) -> dict:
    """Product ids drawn from the seed, and the roles some of them play."""
    if "ids" not in run.state:
        base = run.rng.randrange(10_000, 90_000)
        pids = [product_id(base + n) for n in range(P.products)]
        run.state["ids"] = {"all": pids, "hot": pids[:P.hot], "stampede": pids[0], "lock": pids[P.hot],
                            "overrun": pids[P.hot + 1], "stale": pids[P.hot + 2:P.hot + 2 + P.stale_probes],
                            "second": pids[P.hot + 2 + P.stale_probes], "trace": pids[-1],
                            "absent": [product_id(base + P.products + n) for n in range(P.absent)]}
    return run.state["ids"]


def catalog(run: Run) -> Catalog:
    if "catalog" not in run.state:
        run.state["catalog"] = Catalog(run, SERVICES, run.seed)
    return run.state["catalog"]


def observer(run: Run) -> RedisObserver:
    if "observer" not in run.state:
        run.state["observer"] = RedisObserver(run.ns.reader_url_for("redis"))
    return run.state["observer"]


def cache_key(run: Run, pid: str) -> str:
    """The contract: product `pid` is cached under `<namespace>:product:<pid>`."""
    return run.ns.key(f"product:{pid}")


def probes(run: Run) -> CacheProbes:
    if "probes" not in run.state:
        run.state["probes"] = CacheProbes(run, catalog(run), observer(run), lambda pid: cache_key(run, pid))
    return run.state["probes"]


def reprovision(run: Run) -> None:
    """Redis restarted empty: the run's ACL user is back (the service's credentials still work)."""
    provision_redis(run.stack.url("redis"), run.ns.name, run.ns.password, run.ns.reader_password)


# --- phases ------------------------------------------------------------------------------------

def start(run: Run, ctx: PhaseContext) -> None:
    PgTap.attach(run.proxies["postgres"], ID_PATTERN, run.history.elapsed)  # before the first statement
    run.services["invalidator"].start()
    for name in SERVICES:
        run.services[name].start()
    for name in SERVICES:
        run.services[name].wait_healthy()
    with psycopg.connect(run.ns.reader_url, connect_timeout=10) as conn:  # its slot, if it uses one, first
        wait_quietly(lambda: conn.execute("SELECT 1 FROM pg_replication_slots WHERE database = current_database()")
                     .fetchone(), 5)
    pids, absent = ids(run)["all"], ids(run)["absent"]
    catalog(run).concurrent_gets(absent, probe="absent")  # 404s: a cache may remember them
    catalog(run).create(pids + absent)
    created = time.monotonic()

    def read_absent_later() -> None:  # past the freshness bound, well within any entry's TTL
        time.sleep(max(0.0, created + P.absent_read_after - time.monotonic()))
        catalog(run).concurrent_gets(absent + absent[::-1], probe="created-late")  # each by both instances

    run.state["absent_reader"] = later(read_absent_later)
    wait_quietly(lambda: probes(run).up_to_date(pids), 5)  # the creations' invalidations have landed
    probes(run).ttl_probe(pids)
    probes(run).flush_reads()


def stampede(run: Run, ctx: PhaseContext) -> None:
    probes(run).stampede(ids(run)["stampede"], P.readers, P.slow_ms)
    probes(run).flush_reads()


def lock_holder_killed(run: Run, ctx: PhaseContext) -> None:
    probes(run).separate_locks(ids(run)["lock"], ids(run)["second"])  # a slow holder blocks no other key
    probes(run).kill_lock_holder(ids(run)["lock"], 0, "catalog", P.waiters)
    probes(run).flush_reads()


def lock_overrun(run: Run, ctx: PhaseContext) -> None:
    probes(run).lock_overrun(ids(run)["overrun"])
    probes(run).flush_reads()


def stale_set_race(run: Run, ctx: PhaseContext) -> None:
    for pid in ids(run)["stale"]:
        probes(run).stale_set(pid)
    probes(run).flush_reads()


def faults(run: Run) -> list[list[At]]:
    fb = P.fallback_after
    # the invalidator swept: a SIGKILL just after its first Redis write of a batch (markers written,
    # the slot not advanced: the changes come again) and just after its slot advance, each on fresh
    # work; over well before the load ends, so the last restart has caught up before quiescence
    invalidator = [At(BoundarySweep("invalidator", fallback_after=fb, max_seconds=P.sweep_seconds, max_ordinal=1,
                                    hold_before=(), ready_within=10), after_s=1.5)]
    # apart from the invalidator's crashes (a stale read must be the cache's doing, not a restart's),
    # and from each other (each outage's recovery window stays clear of the next one)
    redis = [At(Cut("redis", seconds=P.redis_cut), after_s=8),
             At(RestartServer("redis", mode="kill", down=P.redis_down, keep_data=False, then=reprovision), after_s=17),
             # Redis hangs (requests in, no answers): only the client's own timeouts bound a read;
             # once the restart's recovery window (the hit ratio 4-6 s after it) is over
             At(OneWayCut("redis", seconds=P.redis_hang), after_s=22, ready=recovery_judged, ready_within=20)]
    return [invalidator, redis]


def recovery_judged(run: Run) -> bool:
    """The last Redis fault ended and its recovery window (redis-outage's hit ratio) is over."""
    from ..checks.cache import HIT_RATIO_WITHIN
    from ..nemesis import fault_events

    ends = [f["end"] for f in fault_events(run.history) if f["target"] == "redis"]
    return bool(ends) and None not in ends and run.history.elapsed() >= max(ends) + HIT_RATIO_WITHIN + 2.5


def load(run: Run, ctx: PhaseContext) -> None:
    pids, hot = ids(run)["all"], ids(run)["hot"]
    keys = {p: cache_key(run, p) for p in hot}
    done = threading.Event()

    def sample() -> None:  # the hot keys' cached versions, for regressions
        while not done.wait(0.25):
            observe_cache(run.history, "cache-sample", observer(run), keys)

    sampler = later(sample)
    started = time.monotonic()
    stop = lambda: ctx.out_of_time() or (time.monotonic() - started >= P.load_seconds  # noqa: E731
                                         and ctx.nemesis_done())
    def late_reads() -> None:  # the stale-set probes' keys, well past the freshness bound after their updates
        if not ctx.nemesis.stopped.wait(P.late_reads_after):
            catalog(run).concurrent_gets(ids(run)["stale"], probe="late-read")

    late = later(late_reads)
    sent = catalog(run).load(pids, hot, stop, P.read_rate, P.write_rate)
    late.join(5)
    run.state["absent_reader"].join(30)
    done.set()
    sampler.join(5)
    run.note(f"load: {sent} reads")
    probes(run).flush_reads()


def settle_and_observe(run: Run, ctx: PhaseContext) -> None:
    pids = ids(run)["all"]
    quiesce(run.history, {"cached versions stable": versions_stable(observer(run), lambda: [cache_key(run, p) for p in pids],
                                                                    1.5)}, P.quiesce_timeout)
    observe_rows(run.history, "final-db", run.ns.reader_url,
                 {"products": "SELECT id, name, price_cents, version FROM public.products ORDER BY id"})
    observe_cache(run.history, "final-cache", observer(run), {p: cache_key(run, p) for p in pids})
    probes(run).flush_reads()


def traces(run: Run, ctx: PhaseContext) -> None:
    pid = ids(run)["trace"]
    traced = []
    for _ in range(2):
        observer(run).expire(cache_key(run, pid))
        traced.append(catalog(run).get(pid, probe="trace-miss"))
        traced.append(catalog(run).get(pid, probe="trace-hit"))
    codes = {}
    for name in (*SERVICES, "invalidator"):
        run.services[name].stop()
        codes[name] = run.services[name].exit_code()
    run.history.observe("shutdown", services=codes)
    want = {r.trace_id for r in traced if r.ok}
    wait_quietly(lambda: want <= {e.data.get("trace_id") for e in run.history.events("span")
                                  if e.data.get("service") == "catalog"}, 15)
    probes(run).flush_reads()


SCENARIO = Scenario(
    params=P,
    phases=[Phase("start, create the products, fill every key at once (TTL probe)", start),
            Phase(f"stampede: {P.readers} readers of an expired hot key", stampede),
            Phase("a slow lock holder and another key's miss; a lock holder SIGKILLed mid-fill", lock_holder_killed),
            Phase("a lock holder overrunning its lock's TTL", lock_overrun),
            Phase("slow misses interleaved with an update and its invalidation", stale_set_race),
            Phase("load under invalidator crashes and Redis outages", load, faults, 45),
            Phase("quiesce and compare the cache with the database", settle_and_observe),
            Phase("traces: a traced miss and hit, SIGTERM flush", traces)],
    checks={
        "stampede": Check(check_stampede, needs=[(SlowReads.kind, "postgres")]),
        "ttl-jitter": Check(check_ttl_jitter),
        "lock-safety": Check(check_lock_safety, needs=[(Kill.kind, "catalog"), (HoldReads.kind, "postgres")]),
        "freshness": Check(check_freshness, needs=[(CrashPoint.kind, "invalidator")]),
        "stale-set-race": Check(check_stale_set_race, needs=[(HoldReads.kind, "postgres")]),
        "redis-outage": Check(check_redis_outage, needs=[(Cut.kind, "redis"), (RestartServer.kind, "redis"),
                                                         (OneWayCut.kind, "redis")]),
        "traces": Check(cache_trace_check(SERVICES, run_secret)),
    })


def run(run: Run) -> None:
    try:
        play(SCENARIO, run)
    finally:
        if "catalog" in run.state:
            run.state["catalog"].close()
        if "observer" in run.state:
            run.state["observer"].close()


# --- live mode (`make lab-3`): steady traffic and what to show -----------------------------------

def traffic(run: Run, stop: threading.Event, rate: float = 10.0) -> None:
    pids = ids(run)["all"]
    if "postgres" in run.proxies:  # the database reads per second come from the tap
        probes(run)
    catalog(run).create(pids)
    run.state["live_t0"] = run.history.elapsed()
    catalog(run).load(pids, ids(run)["hot"], stop.is_set, read_rate=max(rate * 4, 10), write_rate=max(rate / 5, 0.5),
                      readers=4)


def hot_key_reads(reads: list[tuple[float, str, int]], hot: list[str], now: float, window: float) -> str:
    """Database reads per hot key over the window (what `stampede` judges per expiry), from the tap."""
    counts = {key: 0 for key in hot}
    for t, key, _ in reads:
        if key in counts and t >= now - window:
            counts[key] += 1
    if not counts:
        return "-"
    worst = max(counts, key=counts.get)
    return f"max {counts[worst]} ({worst}), {sum(counts.values()) / len(counts):.1f} on average"


def last_write_staleness(history) -> str:
    """The latest acknowledged write, and how long reads kept returning an older version after it
    (what `freshness` and `stale-set-race` judge): still stale, or visible after N s."""
    puts = [op for op in history.ops("put") if op.type == "ok" and isinstance(op.result.get("body"), dict)]
    if not puts:
        return "no write yet"
    last = max(puts, key=lambda op: op.t_complete)
    product, version = last.invoke.get("product"), last.result["body"].get("version", 0)
    gets = [op for op in history.ops("get") if op.type == "ok" and op.invoke.get("product") == product
            and op.t_invoke >= last.t_complete and isinstance(op.result.get("body"), dict)]
    stale = [op for op in gets if op.result["body"].get("version", 0) < version]
    if gets and gets[-1] in stale:
        return f"{product} v{version}: still stale {history.elapsed() - last.t_complete:.1f} s after the write"
    lag = max((op.t_invoke - last.t_complete for op in stale), default=0.0)
    return f"{product} v{version}: visible after {lag:.2f} s" if gets else f"{product} v{version}: not read yet"


def metrics(run: Run, elapsed: float) -> dict[str, str]:
    """What the checks judge (database reads per hot key, staleness after the last write), then hit
    ratio (measured at the database), database reads/s, read p50/p99."""
    window = 5.0
    shown = {"last write": last_write_staleness(run.history)}
    shown.update(catalog_metrics(run.history, elapsed, window))
    try:
        now = run.history.elapsed()
        snapshot = probes(run).tap.snapshot()
        shown = {"db reads per hot key (5 s)": hot_key_reads(snapshot, ids(run)["hot"], now, window), **shown}
        reads = sum(1 for t, _, _ in snapshot if t >= now - window)
        gets = sum(1 for op in run.history.ops("get") if op.t_invoke >= now - window)
        puts = sum(1 for op in run.history.ops("put") if op.t_invoke >= now - window)
        misses = max(reads - puts, 0)
        shown["hit ratio (at the database)"] = f"{1 - misses / gets:.0%}" if gets else "-"
        shown["database statements/s (naming a product)"] = f"{reads / window:.1f}"
    except Exception as e:  # the view must survive a restart
        shown["database"] = f"not readable yet ({type(e).__name__})"
    return shown
