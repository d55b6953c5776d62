"""Lab-3 benchmark (not a test): the reference catalog on the native runtime.

    python -m tests.bench.lab3 [--seconds 8] [--concurrency 16] [--products 100] [--rounds 3] [--smoke]

1. Cached reads: --concurrency threads GET hot products from the catalog (all cached) for
   --seconds: reads/s and p50/p99 latency, against a raw redis-py GET loop on the same keys at the
   same concurrency in the same run (the ceiling for any cache-aside read). GET /healthz on the same
   server shows the HTTP stack's own ceiling: target cached >= 0.8 of it. (The catalog's number
   includes HTTP and JSON, and the client's own httpx cost; every loop runs on this machine's cores.)
2. Database load with and without the cache: the same read loop with Redis reachable, then with
   Redis cut off through the fault proxy (the catalog's degraded mode reads PostgreSQL) - database
   statements per second and per read, counted by the PostgreSQL tap (grader/nemesis/pgwire.py).
"""
from __future__ import annotations

import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import redis

from grader.lab import find_lab
from grader.launch import launch_services
from grader.nemesis.pgwire import PgTap
from grader.nemesis.proxy import TcpProxy
from grader.runner import _proxied_url
from grader.stack import make_stack
from grader.workloads.catalog import ID_PATTERN, product_id
from tests.bench.figures import Figure, main_for

SIZES = {"seconds": 8.0, "concurrency": 16, "products": 100}
SMOKE = {"seconds": 0.5, "concurrency": 2, "products": 5}


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))] if values else float("nan")


def loop(concurrency: int, seconds: float, one) -> tuple[int, list[float]]:
    """`one(rng)` in `concurrency` threads for `seconds`: (calls, latencies)."""
    stop = time.monotonic() + seconds
    lat: list[list[float]] = [[] for _ in range(concurrency)]

    def worker(i: int) -> None:
        rng = random.Random(i)
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            one(rng, i)
            lat[i].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [x for xs in lat for x in xs]
    return len(flat), flat


def show(name: str, n: int, lat: list[float], seconds: float) -> float:
    rate = n / seconds
    print(f"  {name:42} {rate:8.0f}/s   p50 {1000 * percentile(lat, 0.5):6.2f} ms   p99 {1000 * percentile(lat, 0.99):6.2f} ms")
    return rate


def one_round(seconds: float, concurrency: int, products: int) -> list[Figure]:
    import types

    args = types.SimpleNamespace(seconds=seconds, concurrency=concurrency, products=products)
    lab = find_lab("lab-3")
    with make_stack(lab.infra, "native") as stack, tempfile.TemporaryDirectory() as tmp:
        ns = stack.namespace(prefix="bench")
        env = ns.env()
        pg_proxy = TcpProxy("127.0.0.1", stack.servers["postgres"].port).start()
        redis_proxy = TcpProxy("127.0.0.1", stack.servers["redis"].port).start()
        tap = PgTap.attach(pg_proxy, ID_PATTERN)
        env["DATABASE_URL"] = _proxied_url(env["DATABASE_URL"], pg_proxy.port)
        env["REDIS_URL"] = _proxied_url(env["REDIS_URL"], redis_proxy.port)
        specs = {"catalog": lab.services["catalog"]}
        services = launch_services(specs, lab.reference, env, Path(tmp) / "logs")
        catalog = services["catalog"].start()
        try:
            catalog.wait_healthy(60)
            pids = [product_id(n) for n in range(args.products)]
            clients = [httpx.Client(base_url=catalog.base_url, timeout=10) for _ in range(args.concurrency)]
            for p in pids:
                clients[0].put(f"/products/{p}", json={"name": p, "price_cents": 100, "version": 0}).raise_for_status()
            for p in pids:
                clients[0].get(f"/products/{p}").raise_for_status()  # all cached now
            keys = [ns.key(f"product:{p}") for p in pids]
            raw = redis.Redis.from_url(stack.url("redis"), max_connections=args.concurrency * 2)

            print(f"lab-3 bench: {args.concurrency} concurrent readers, {args.seconds:g} s each, "
                  f"{args.products} cached products")
            n, lat = loop(args.concurrency, args.seconds, lambda rng, i: raw.get(rng.choice(keys)))
            raw_rate = show("raw redis-py GET loop", n, lat, args.seconds)

            n, lat = loop(args.concurrency, args.seconds, lambda rng, i: clients[i].get("/healthz"))
            http_rate = show("catalog GET /healthz (HTTP alone, no Redis)", n, lat, args.seconds)

            before = len(tap.snapshot())
            n, lat = loop(args.concurrency, args.seconds,
                          lambda rng, i: clients[i].get(f"/products/{rng.choice(pids)}"))
            cached_rate = show("catalog GET /products/{id} (cached)", n, lat, args.seconds)
            print(f"  cached / HTTP alone: {cached_rate / http_rate:.1%}")
            cached_db = len(tap.snapshot()) - before
            print(f"  cached / raw: {cached_rate / raw_rate:.1%} (target >= 50 %)")
            print(f"  database statements with the cache: {cached_db / args.seconds:.1f}/s "
                  f"({cached_db / max(n, 1):.3f} per read)")

            redis_proxy.cut()  # degraded mode: every read goes to PostgreSQL
            try:
                before = len(tap.snapshot())
                n, lat = loop(args.concurrency, args.seconds,
                              lambda rng, i: clients[i].get(f"/products/{rng.choice(pids)}"))
                uncached_rate = show("catalog GET, Redis cut off (no cache)", n, lat, args.seconds)
                uncached_db = len(tap.snapshot()) - before
                print(f"  database statements without the cache: {uncached_db / args.seconds:.1f}/s "
                      f"({uncached_db / max(n, 1):.3f} per read)")
            finally:
                redis_proxy.heal()
            for c in clients:
                c.close()
            raw.close()
        finally:
            for s in services.values():
                s.stop()
            pg_proxy.stop()
            redis_proxy.stop()
    per_read = cached_db / max(cached_rate * args.seconds, 1)
    uncached_per_read = uncached_db / max(uncached_rate * args.seconds, 1)
    return [Figure("catalog GET /products/{id} (cached)", cached_rate, "reads/s", "same server's GET /healthz",
                   http_rate, target=">= 0.8"),
            Figure("catalog cached GET, against raw Redis", cached_rate, "reads/s", "raw redis-py GET", raw_rate),
            Figure("catalog GET with Redis cut off (degraded)", uncached_rate, "reads/s", "cached reads", cached_rate),
            Figure("database statements per cached read", per_read, "per read", higher_is_better=False),
            Figure("database statements per read, no cache", uncached_per_read, "per read", higher_is_better=False)]


if __name__ == "__main__":
    main_for("lab3", sys.modules[__name__])
