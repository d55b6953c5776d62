"""The catalog workload (lab 3): products created and updated through the API with their versions,
paced skewed reads (a few hot keys, a long tail), and a hot-key stampede of many concurrent
readers. Every request is an operation in the history: f="put" (invoke: product, expected version;
ok: the new version) or f="get" (invoke: product; ok: the product with its version).

Product ids are fixed-width (`sku-` + 5 characters) so no id occurs inside another: the database
tap (grader/nemesis/pgwire.py) counts the statements naming each id by its bytes.
"""
from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable, Sequence

import psycopg

from ..history import History
from .http import HttpWorkload, Reply

if TYPE_CHECKING:
    from ..runner import Run

ID_PATTERN = rb"sku-[0-9a-z]{5}"


def product_id(n: int | str) -> str:
    return f"sku-{n:05d}" if isinstance(n, int) else f"sku-{n[:5]:0>5}"


class Catalog:
    """Seeded traffic against one or more instances of the catalog service (same database and
    cache). Knows the version of every product it wrote, as the API acknowledged it."""

    def __init__(self, run: "Run", services: Sequence[str], seed: int, burst_connections: int = 256) -> None:
        self.run = run
        # one client per instance, each with its own seed: the grader's trace ids must never repeat
        self.clients = [HttpWorkload(run.services[s].base_url, run.history, seed=seed + 1000 + i, secret=run.secret)
                        for i, s in enumerate(services)]
        self.burst = [HttpWorkload(run.services[s].base_url, run.history, seed=seed + 2000 + i, secret=run.secret,
                                   timeout=20, max_connections=burst_connections) for i, s in enumerate(services)]
        self.rng = random.Random(seed)
        self.versions: dict[str, int] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        for c in self.clients + self.burst:
            c.close()

    # --- single requests ---
    def get(self, pid: str, instance: int = 0, **meta) -> Reply:
        return self.clients[instance].send("get", "GET", f"/products/{pid}", product=pid, **meta)

    def put(self, pid: str, instance: int = 0, **meta) -> Reply:
        with self._lock:
            expected = self.versions.get(pid, 0)
            body = {"name": f"{pid} rev {expected + 1}", "price_cents": self.rng.randrange(100, 100_000),
                    "version": expected}
        reply = self.clients[instance].send("put", "PUT", f"/products/{pid}", body=body, product=pid,
                                            expected=expected, **meta)
        with self._lock:
            if reply.ok and isinstance(reply.body, dict) and isinstance(reply.body.get("version"), int):
                self.versions[pid] = max(self.versions.get(pid, 0), reply.body["version"])
            elif reply.status == 409 or not reply.ok:
                current = self.db_version(pid)
                if current is not None:
                    self.versions[pid] = current
        return reply

    def db_version(self, pid: str) -> int | None:
        """The row's version, read with the grader's own connection (after a refused or unknown PUT)."""
        try:
            with psycopg.connect(self.run.ns.reader_url, connect_timeout=5) as conn:
                row = conn.execute("SELECT version FROM public.products WHERE id = %s", (pid,)).fetchone()
            return row[0] if row else 0
        except psycopg.Error:
            return None

    # --- traffic ---
    def create(self, pids: Sequence[str]) -> None:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda p: self.put(p, probe="seed"), pids))

    def concurrent_gets(self, pids: Sequence[str], per_instance: bool = True, **meta) -> list[Reply]:
        with ThreadPoolExecutor(min(len(pids), 32) or 1) as pool:
            return list(pool.map(lambda ip: self.get(ip[1], ip[0] % len(self.clients) if per_instance else 0, **meta),
                                 enumerate(pids)))

    def stampede(self, pid: str, readers: int, **meta) -> list[Reply]:
        """`readers` GETs of one key released together (a barrier), spread over the instances."""
        barrier = threading.Barrier(readers)
        replies: list[Reply | None] = [None] * readers

        def reader(i: int) -> None:
            try:
                barrier.wait(10)
            except threading.BrokenBarrierError:
                pass
            client = self.burst[i % len(self.burst)]
            replies[i] = client.send("get", "GET", f"/products/{pid}", product=pid, **meta)

        threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(readers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        return [r for r in replies if r is not None]

    def load(self, pids: Sequence[str], hot: Sequence[str], stop: Callable[[], bool], read_rate: float,
             write_rate: float, readers: int = 6) -> int:
        """Reads (80 % on the hot keys) and versioned writes at about the given rates until stop()."""
        sent = [0]

        def read_loop(i: int) -> None:
            rng = random.Random(self.rng.random() + i)
            while not stop():
                pid = rng.choice(hot) if rng.random() < 0.8 else rng.choice(pids)
                self.get(pid, i % len(self.clients), probe="load")
                sent[0] += 1
                time.sleep(readers / read_rate)

        def write_loop() -> None:
            rng = random.Random(self.rng.random())
            while not stop():
                self.put(rng.choice(hot) if rng.random() < 0.5 else rng.choice(pids), rng.randrange(len(self.clients)),
                         probe="load")
                time.sleep(1 / write_rate)

        threads = [threading.Thread(target=read_loop, args=(i,), daemon=True) for i in range(readers)]
        threads.append(threading.Thread(target=write_loop, daemon=True))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sent[0]


def catalog_metrics(history: History, elapsed: float, window: float = 5.0) -> dict[str, str]:
    """The live view's client-side numbers over the last `window` seconds: reads/s, p50/p99, errors,
    the worst staleness (how long ago a newer version had been acknowledged when a read returned an
    older one)."""
    now = history.elapsed()
    ops = [op for op in history.ops("get") if op.t_complete is not None and op.t_complete >= now - window]
    lat = sorted(op.t_complete - op.t_invoke for op in ops)
    errors = sum(1 for op in ops if op.type == "info")
    pct = (lambda q: f"{1000 * lat[min(len(lat) - 1, int(q * len(lat)))]:.1f} ms") if lat else (lambda q: "-")
    return {"reads/s": f"{len(ops) / window:.1f}", "read p50 / p99": f"{pct(0.5)} / {pct(0.99)}",
            "5xx or no answer": str(errors), "max staleness": f"{max_staleness(history, since=now - window):.2f} s"}


def max_staleness(history: History, since: float = 0.0) -> float:
    acked: dict[str, list[tuple[float, int]]] = {}
    for op in history.ops("put"):
        if op.type == "ok" and isinstance(op.result.get("body"), dict):
            acked.setdefault(op.invoke.get("product"), []).append((op.t_complete, op.result["body"].get("version", 0)))
    worst = 0.0
    for op in history.ops("get"):
        if op.type != "ok" or op.t_invoke < since or not isinstance(op.result.get("body"), dict):
            continue
        v = op.result["body"].get("version", 0)
        newer = [t for t, av in acked.get(op.invoke.get("product"), []) if av > v and t < op.t_invoke]
        if newer:
            worst = max(worst, op.t_invoke - min(newer))
    return worst
