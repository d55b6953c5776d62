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

from grader.checks.cache import check_freshness, check_stampede, check_ttl_jitter
from grader.history import History
from grader.nemesis import RestartServer
from grader.nemesis.pgwire import PgTap
from grader.nemesis.proxy import TcpProxy
from grader.observe.redis import RedisObserver, version_of
from grader.stack import make_stack
from grader.stack.credentials import provision_redis
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


def test_redis_observer_keeps_a_products_leases_alive(native_stack):
    """The overrun probe's lease: keys under the prefix naming the product, with a TTL, besides its
    cache entry - not another product's, not a key without a TTL."""
    admin = native_stack.url("redis")
    client = redis.Redis.from_url(admin)
    client.set("lease:lock:product:p[1]", "token", px=2000)
    client.set("lease:product:p[1]", "{}", px=2000)
    client.set("lease:lock:product:p[2]", "token", px=2000)
    client.set("lease:pinned:p[1]", "x")
    observer = RedisObserver(admin)
    try:
        assert observer.extend_leases("lease:", "p[1]", "lease:product:p[1]", 60_000) == ["lease:lock:product:p[1]"]
        assert client.pttl("lease:lock:product:p[1]") > 50_000
        assert client.pttl("lease:product:p[1]") <= 2000 and client.pttl("lease:lock:product:p[2]") <= 2000
        assert client.pttl("lease:pinned:p[1]") == -1
    finally:
        observer.close()
        client.delete("lease:lock:product:p[1]", "lease:product:p[1]", "lease:lock:product:p[2]", "lease:pinned:p[1]")
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
    h.complete(n, "ok" if status == 200 else "info", "client", "get", status=status,
               body={"id": pid, "version": version} if version is not None else {"error": "x"})


def test_freshness_judges_reads_sent_past_the_bound():
    h = History()
    n = h.invoke("client", "put", product="p", expected=1)
    h.complete(n, "ok", "client", "put", status=200, body={"id": "p", "version": 2})
    get(h, "p", 1)  # at once: allowed (within the bound)
    assert check_freshness(h, **ARGS).passed
    h._t0 -= 60  # the next read is sent a minute later
    get(h, "p", 1)
    result = check_freshness(h, **ARGS)
    assert not result.passed and "returned version 1" in result.evidence[0]


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
