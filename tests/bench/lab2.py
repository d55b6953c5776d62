"""Lab-2 benchmark (not a test): the reference relay and projector on the native runtime.

    python -m tests.bench.lab2 [--rate 500] [--seconds 20] [--backlog 20000]

1. End-to-end lag at a fixed rate of committed orders: writer threads commit orders + outbox rows
   straight into PostgreSQL (one transaction each, the order service's SQL, paced to --rate), the
   relay and the projector run as usual. Lag = the projector's apply time (read_model.orders.updated_at)
   minus the outbox row's insert time (outbox.created_at); both are PostgreSQL clock readings, so no
   polling skews them. Target: p99 < 250 ms at 500 orders/s.
2. Relay throughput: a backlog of --backlog outbox rows, then the relay started; records/s until the
   slot's confirmed_flush_lsn passes the backlog, against raw confluent-kafka produce + flush of the
   same records (the ceiling for any relay on this broker).
"""
from __future__ import annotations

import argparse
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg
from confluent_kafka import Producer

from grader.kafka import ensure_topics
from grader.lab import find_lab
from grader.launch import launch_services
from grader.stack import make_stack
from grader.wait import wait_until

WRITERS = 4


def write_orders(url: str, rate: float, seconds: float, tag: str) -> int:
    """Commit `rate` orders per second for `seconds` (each its own transaction); returns how many."""
    from services.common.outbox import events

    total = int(rate * seconds)
    start = time.monotonic() + 0.2
    counts = [0] * WRITERS

    def writer(w: int) -> None:
        with psycopg.connect(url) as conn:
            for i in range(w, total, WRITERS):
                pause = start + i / rate - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                order_id = f"{tag}-{i}"
                with conn.transaction():
                    conn.execute("INSERT INTO orders (order_id, customer_id, amount_cents, status, version) "
                                 "VALUES (%s, %s, 100, 'placed', 1)", (order_id, f"c-{i % 16}"))
                    events.append(conn, str(uuid.uuid4()), events.ORDER, order_id, "OrderPlaced",
                                  events.order_payload(order_id, f"c-{i % 16}", 100, "placed", 1), None)
                counts[w] += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    achieved = total / (time.monotonic() - start)
    print(f"  wrote {total} orders at {achieved:.0f}/s (asked {rate:.0f}/s)")
    return total


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def lag(url: str, tag: str, n: int) -> list[float]:
    with psycopg.connect(url, autocommit=True) as conn:
        wait_until(lambda: conn.execute("SELECT count(*) FROM read_model.orders WHERE order_id LIKE %s",
                                        (f"{tag}-%",)).fetchone()[0] >= n, 120, f"{n} orders applied", interval=0.2)
        rows = conn.execute("""SELECT extract(epoch FROM r.updated_at - o.created_at) * 1000
                               FROM read_model.orders r JOIN outbox o ON o.aggregateid = r.order_id
                               WHERE r.order_id LIKE %s""", (f"{tag}-%",)).fetchall()
    return [float(ms) for (ms,) in rows]


def slot_position(url: str) -> tuple[int, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("""SELECT confirmed_flush_lsn - '0/0'::pg_lsn, pg_current_wal_lsn() - '0/0'::pg_lsn
                               FROM pg_replication_slots WHERE database = current_database()""").fetchone()


def raw_produce(bootstrap: str, topic: str, n: int) -> float:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 2})
    value = b'{"order_id": "x", "customer_id": "c-1", "amount_cents": 100, "status": "placed", "version": 1}'
    t0 = time.perf_counter()
    for i in range(n):
        while True:
            try:
                producer.produce(topic, key=f"o-{i}".encode(), value=value, headers=[("id", str(uuid.uuid4()).encode())])
                break
            except BufferError:
                producer.poll(0.01)
    assert producer.flush(60) == 0
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--backlog", type=int, default=20000)
    args = parser.parse_args()
    lab = find_lab("lab-2")
    with make_stack(lab.infra, "native") as stack, tempfile.TemporaryDirectory() as tmp:
        ns = stack.namespace(prefix="bench")
        env, bootstrap, url = ns.env(), stack.url("kafka"), ns.database_url
        ensure_topics(bootstrap, {ns.topic(t.name): t.partitions for t in lab.topics} | {ns.topic("raw"): 3})
        services = launch_services(lab.services, lab.reference, env, Path(tmp) / "logs")
        try:
            services["order_service"].start().wait_healthy()  # creates the tables and the slot
            for name in ("cdc_relay", "projector"):
                services[name].start()
            wait_until(lambda: "assigned" in services["projector"].log.read_text(), 30, "the projector's group join")

            print(f"\nlab-2 benchmark, native runtime: 1. end-to-end lag at {args.rate:.0f} committed orders/s")
            write_orders(url, min(args.rate, 50), 2, "warm")  # first records: group join, connections
            n = write_orders(url, args.rate, args.seconds, "lag")
            ms = lag(url, "lag", n)
            print(f"  commit -> applied downstream: p50 {percentile(ms, 50):.0f} ms, p99 {percentile(ms, 99):.0f} ms, "
                  f"max {max(ms):.0f} ms over {len(ms)} orders (target p99 < 250 ms)")

            print(f"2. relay throughput: a backlog of {args.backlog} outbox rows")
            services["cdc_relay"].stop()
            write_orders(url, 10**6, args.backlog / 10**6, "backlog")
            _, end = slot_position(url)
            t0 = time.perf_counter()
            services["cdc_relay"].start()
            wait_until(lambda: slot_position(url)[0] >= end, 300, "the relay to pass the backlog", interval=0.05)
            relay_rate = args.backlog / (time.perf_counter() - t0)
            raw = raw_produce(bootstrap, ns.topic("raw"), args.backlog)
            print(f"  reference relay: {relay_rate:.0f} records/s (process start included); raw produce + flush: "
                  f"{raw:.0f} records/s; ratio {relay_rate / raw:.2f}")
        finally:
            for service in services.values():
                service.stop()
            print("  relay log:", *[line for line in services["cdc_relay"].log.read_text().splitlines() if "lag:" in line],
                  sep="\n    ")


if __name__ == "__main__":
    main()
