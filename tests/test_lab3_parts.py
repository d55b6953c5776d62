"""Lab 3's grader parts against real servers: the PostgreSQL tap (statements per key, held and slow
answers) for psycopg 3 and psycopg2, the Redis observer, a Redis restart that gives the run's user
back; and the cache checkers on small hand-made histories."""
from __future__ import annotations

import threading
import time
from urllib.parse import urlsplit, urlunsplit

import psycopg
import psycopg2
import pytest
import redis

from grader.checks.cache import check_freshness, check_lock_safety, check_stampede, check_ttl_jitter
from grader.history import History
from grader.nemesis import RestartServer
from grader.nemesis.pgwire import PgTap
from grader.nemesis.proxy import TcpProxy
from grader.observe.redis import RedisObserver, version_of
from grader.stack import make_stack
from grader.stack.credentials import provision_redis
from grader.wait import wait_until
from grader.workloads.cache_probes import LeaseKeeper
from grader.workloads.catalog import ID_PATTERN

ARGS = {"id": "x", "title": "x", "max_points": 1, "hint": None}


def via(url: str, port: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit(":", 1)[0] + f":{port}"))


@pytest.fixture
def tapped(native_stack):
    url = native_stack.url("postgres")
    with TcpProxy("127.0.0.1", urlsplit(url).port) as proxy:
        tap = PgTap.attach(proxy, ID_PATTERN)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS tap_products (id text PRIMARY KEY, version int)")
            conn.execute("INSERT INTO tap_products VALUES ('sku-00001', 1), ('sku-00002', 1) "
                         "ON CONFLICT (id) DO UPDATE SET version = 1")
        yield tap, via(url, proxy.port), url


def test_tap_counts_statements_naming_a_key_in_both_protocols(tapped):
    tap, url, _ = tapped
    with psycopg.connect(url, autocommit=True) as conn:  # extended protocol: the id in a Bind
        for _ in range(7):  # past psycopg's prepare threshold: Bind only, no Parse text
            conn.execute("SELECT version FROM tap_products WHERE id = %s", ("sku-00001",))
        conn.execute("SELECT 1")
    legacy = psycopg2.connect(url)  # simple protocol: the id as a literal in a Query
    with legacy.cursor() as cur:
        cur.execute("SELECT version FROM tap_products WHERE id = %s", ("sku-00002",))
    legacy.close()
    assert tap.count("sku-00001") == 7
    assert tap.count("sku-00002") == 1
    assert {k for _, k, _ in tap.snapshot()} == {"sku-00001", "sku-00002"}


def test_a_held_answer_comes_from_before_an_update_committed_meanwhile(tapped):
    tap, url, direct = tapped
    hold = tap.hold("sku-00001", n=1, max_seconds=10)
    seen = {}

    def slow_read() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            t0 = time.monotonic()
            seen["version"] = conn.execute("SELECT version FROM tap_products WHERE id = %s", ("sku-00001",)).fetchone()[0]
            seen["took"] = time.monotonic() - t0

    reader = threading.Thread(target=slow_read)
    reader.start()
    assert hold.wait_held(1, 10)
    with psycopg.connect(direct, autocommit=True) as conn:  # committed while the answer is held
        conn.execute("UPDATE tap_products SET version = 2 WHERE id = 'sku-00001'")
    reader.join(0.3)  # the answer stays held: the reader must still be waiting
    assert reader.is_alive() and "version" not in seen
    hold.release()
    reader.join(10)
    assert seen["version"] == 1 and seen["took"] >= 0.3  # it ran before the update: a slow miss
    with psycopg.connect(url, autocommit=True) as conn:  # one-shot: the next read is not held
        assert conn.execute("SELECT version FROM tap_products WHERE id = %s", ("sku-00001",)).fetchone()[0] == 2


def test_a_hold_ends_by_itself_after_its_bound(tapped):
    tap, url, _ = tapped
    tap.hold("sku-00002", n=1, max_seconds=0.5)
    with psycopg.connect(url, autocommit=True) as conn:
        t0 = time.monotonic()
        conn.execute("SELECT version FROM tap_products WHERE id = %s", ("sku-00002",))
        assert 0.4 <= time.monotonic() - t0 < 5


def test_slow_answers_only_for_the_key(tapped):
    tap, url, _ = tapped
    tap.slow("sku-00002", 0.3)
    with psycopg.connect(url, autocommit=True) as conn:
        t0 = time.monotonic()
        conn.execute("SELECT version FROM tap_products WHERE id = %s", ("sku-00001",))
        fast = time.monotonic() - t0
        t0 = time.monotonic()
        conn.execute("SELECT version FROM tap_products WHERE id = %s", ("sku-00002",))
        slow = time.monotonic() - t0
    tap.slow("sku-00002", None)
    assert slow >= 0.3 and fast < 0.3


def test_redis_observer_reads_versions_and_ttls(native_stack):
    admin = native_stack.url("redis")
    client = redis.Redis.from_url(admin)
    client.set("obs:product:a", '{"version": 3, "name": "a"}', px=5000)
    client.set("obs:product:b", "not json")
    observer = RedisObserver(admin)
    entries = observer.entries(["obs:product:a", "obs:product:b", "obs:product:c"])
    assert entries["obs:product:a"]["version"] == 3 and 0 < entries["obs:product:a"]["pttl_ms"] <= 5000
    assert entries["obs:product:b"]["version"] is None and entries["obs:product:b"]["pttl_ms"] == -1
    assert entries["obs:product:c"]["pttl_ms"] == -2
    assert observer.wait_version("obs:product:a", 3, 1) and not observer.wait_version("obs:product:a", 4, 0.2)
    assert observer.expire("obs:product:a") and version_of('{"version": true}') is None
    observer.close()
    client.delete("obs:product:b")
    client.close()


def test_the_overrun_probe_keeps_a_lock_alive_and_sees_who_deleted_it(native_stack):
    """Locks are the keys under the prefix besides the entries (whatever their names); the lease
    keeper renews them past their TTL - time alone never loses them - and notes a DEL at once."""
    admin = native_stack.url("redis")
    client = redis.Redis.from_url(admin)
    client.set("lease:product:p1", "{}", px=2000)
    client.set("lease:anything", "token", px=300)
    observer = RedisObserver(admin)
    keeper = None
    try:
        locks = observer.other_keys("lease:", "lease:product:")
        assert list(locks) == ["lease:anything"] and locks["lease:anything"]["raw"] == "token"
        keeper = LeaseKeeper(observer, {"lease:anything": "token"}, time.monotonic)
        wait_until(lambda: client.pttl("lease:anything") > 5000, 5, "the lease renewed")
        assert keeper.lost is None
        client.delete("lease:anything")
        wait_until(lambda: keeper.lost, 5, "the deletion noticed")
        assert keeper.lost["key"] == "lease:anything" and keeper.lost["how"] == "deleted"
    finally:
        if keeper is not None:
            keeper.stop()
        observer.close()
        client.delete("lease:product:p1", "lease:anything")
        client.close()


class _Run:
    def __init__(self, stack) -> None:
        self.stack, self.history, self.services, self.proxies, self.out_dir = stack, History(), {}, {}, "."


def test_redis_restart_empty_gives_the_run_user_back():
    with make_stack(["redis"], "native") as stack:
        ns = stack.namespace(prefix="t")
        user_url = ns.service_url("redis")
        run = _Run(stack)
        fault = RestartServer("redis", mode="kill", keep_data=False,
                              then=lambda r: provision_redis(stack.url("redis"), ns.name, ns.password, ns.reader_password))
        assert fault.apply(run)
        client = redis.Redis.from_url(user_url, socket_timeout=5)
        client.set(f"{ns.name}:k", "v")  # the run's user works again, still limited to its prefix
        with pytest.raises(redis.ResponseError):
            client.set("other:k", "v")
        client.close()


# --- checkers on hand-made histories ------------------------------------------------------------

def get(h: History, pid: str, version: int | None, probe: str = "load", status: int = 200) -> None:
    n = h.invoke("client", "get", product=pid, probe=probe)
    h.complete(n, "ok" if status == 200 else "fail" if status == 404 else "info", "client", "get", status=status,
               body={"id": pid, "version": version} if version is not None else {"error": "x"})


def test_freshness_judges_reads_sent_past_the_bound():
    h = History()
    n = h.invoke("client", "put", product="p", expected=1)
    h.complete(n, "ok", "client", "put", status=200, body={"id": "p", "version": 2})
    get(h, "p", 1)  # at once: allowed (within the bound) - and nothing could be stale yet: not judged
    assert check_freshness(h, **ARGS).skipped
    h._t0 -= 60  # the next reads are sent a minute later
    get(h, "p", 2)
    assert check_freshness(h, **ARGS).passed
    get(h, "p", 1)
    result = check_freshness(h, **ARGS)
    assert not result.passed and "returned version 1" in result.evidence[0]


def test_freshness_judges_a_404_of_a_product_created_since():
    """A negative cache entry is invalidated too: "not found" long after the creation is stale."""
    h = History()
    get(h, "p", None, probe="absent", status=404)  # before it exists: fine
    n = h.invoke("client", "put", product="p", expected=0)
    h.complete(n, "ok", "client", "put", status=200, body={"id": "p", "version": 1})
    h._t0 -= 12
    get(h, "p", None, probe="created-late", status=404)
    result = check_freshness(h, **ARGS)
    assert not result.passed and "returned 404 (not found)" in result.evidence[0]


def test_stampede_counts_reads_in_the_window():
    h = History()
    for _ in range(3):
        get(h, "hot", 1, probe="stampede")
    h.observe("db-reads", reads=[[0.0, "hot"], [0.0, "hot"], [0.0, "other"]])
    h.observe("stampede", product="hot", t_expired=-1.0, t_end=10.0, version=1)
    result = check_stampede(h, **ARGS)
    assert not result.passed and "2 statements for hot" in result.evidence[0]


def test_ttl_jitter_wants_spread_ttls():
    h = History()
    for i in range(10):
        get(h, f"p{i}", 1, probe="ttl")
    t = h.elapsed()
    h.observe("ttl-probe", t_read=t, entries={f"p{i}": {"pttl_ms": 30_000, "version": 1} for i in range(10)})
    assert not check_ttl_jitter(h, **ARGS).passed
    h.observe("ttl-probe", t_read=t, entries={f"p{i}": {"pttl_ms": 27_000 + 600 * i, "version": 1} for i in range(10)})
    assert check_ttl_jitter(h, **ARGS).passed


def test_lock_safety_blames_a_deleted_lock_not_a_waiters_late_read():
    """A read of the product while the second holder's lock was intact (a waiter that gave up, late
    on a loaded machine) is no failure; the lock deleted while its holder was mid-fill is."""
    h = History()
    h.observe("db-reads", reads=[[10.5, "p"], [12.9, "p"]])  # give-up reads, however late
    h.observe("lock-overrun", product="p", t_second=9.0, locks=["ns:lock:p"], lost=None, window=[10.0, 11.0],
              lock_ttl_seen=2.0)
    result = check_lock_safety(h, **ARGS)
    assert result.passed, result.evidence
    h.observe("lock-overrun", product="p", t_second=9.0, locks=["ns:lock:p"], window=[10.0, 11.0], lock_ttl_seen=2.0,
              lost={"key": "ns:lock:p", "t": 10.2, "now": None, "how": "deleted"})
    result = check_lock_safety(h, **ARGS)
    assert not result.passed and "was deleted at t=10.20s" in result.evidence[0]
    assert "2 more read(s)" not in result.evidence[0]  # 12.9 is past the watch


def test_lock_safety_judges_a_killed_holders_lock_by_its_ttl_not_by_a_clock():
    h = History()
    for _ in range(3):
        get(h, "p", 1, probe="lock-waiter")  # answered at once here; a loaded machine may take 5.3 s
    h.observe("lock-kill", product="p", t_kill=h.elapsed() - 5.3, locks={"ns:lock:p": 1800})
    assert check_lock_safety(h, **ARGS).passed
    h.observe("lock-kill", product="p", t_kill=h.elapsed(), locks={"ns:lock:p": -1})
    result = check_lock_safety(h, **ARGS)
    assert not result.passed and "has no TTL" in result.evidence[0]


def test_lock_safety_wants_a_lock_per_key():
    h = History()
    h.observe("two-keys", product="a", other="b", locks=["ns:lock"], other_locks=[], t_other=1.0, t_read=6.1)
    result = check_lock_safety(h, **ARGS)
    assert not result.passed and "under no lock of its own" in result.evidence[0]
    h.observe("two-keys", product="a", other="b", locks=["ns:lock:a"], other_locks=["ns:lock:b"],
              t_other=1.0, t_read=1.01)
    assert check_lock_safety(h, **ARGS).passed


def test_lock_safety_is_skipped_when_no_probe_reached_its_event():
    h = History()
    h.observe("two-keys", product="a", other="b", reason="no read of a reached the database")
    h.observe("lock-overrun", product="p", reason="the first miss never reached the database")
    result = check_lock_safety(h, **ARGS)
    assert result.skipped and not result.points


def test_redis_outage_blames_reads_answered_only_at_a_hangs_heal():
    """A Redis that takes requests and never answers: reads sent early in the hang and answered only
    when the grader healed it were stuck on Redis (no socket timeout); a slow answer before the heal
    is no failure, however slow."""
    from grader.checks.cache import check_redis_outage

    def hang(stuck: bool) -> History:
        h = History()
        h.record("fault", "nemesis", fid=1, phase="start", fault="one-way-cut", target="redis")
        ids = [h.invoke("client", "get", product=f"p{i}", probe="load") for i in range(4)]
        if not stuck:  # answered from the database, late (a loaded machine) but before the heal
            h._t0 -= 4.5
            for n in ids:
                h.complete(n, "ok", "client", "get", status=200, body={"id": "p", "version": 1})
        h._t0 -= 6 if stuck else 1.5
        h.record("fault", "nemesis", fid=1, phase="end", fault="one-way-cut", target="redis", effective=True)
        if stuck:
            for n in ids:
                h.complete(n, "ok", "client", "get", status=200, body={"id": "p", "version": 1})
        return h

    assert check_redis_outage(hang(False), **ARGS).passed
    result = check_redis_outage(hang(True), **ARGS)
    assert not result.passed and "4 of 4 GETs" in result.evidence[0] and "no socket timeout" in result.evidence[0]
