"""Lab-1 benchmark (not a test): the reference services against raw confluent-kafka, same run.

    python -m tests.bench.lab1 [--orders 1000] [--concurrency 8] [--check]

Prints throughput of the order API vs raw produce-and-await-ack at the same concurrency, of the
read model vs a raw consume-and-commit loop, and (with --check) the wall time of a graded run.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
from confluent_kafka import Consumer, Producer

from grader.kafka import CLIENT_DEFAULTS, ensure_topics
from grader.lab import find_lab
from grader.launch import launch_services
from grader.runner import grade
from grader.stack import make_stack
from grader.wait import wait_until
from grader.workload import HttpWorkload
from grader.history import History


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def event(i: int) -> bytes:
    return json.dumps({"event_id": str(uuid.uuid4()), "type": "OrderPlaced", "order_id": f"o-{i}",
                       "customer_id": f"c-{i % 8}", "amount_cents": 100 + i,
                       "occurred_at": "2026-01-01T00:00:00Z"}).encode()


def raw_produce(bootstrap: str, topic: str, n: int, concurrency: int) -> float:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 0})

    def one(i: int) -> None:
        producer.produce(topic, key=f"o-{i}", value=event(i))
        producer.flush(30)  # await the ack, as the API must before answering

    with ThreadPoolExecutor(concurrency) as pool:
        return n / timed(lambda: list(pool.map(one, range(n))))


def raw_consume(bootstrap: str, topic: str, n: int) -> float:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"raw-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False, **CLIENT_DEFAULTS})
    consumer.subscribe([topic])
    seen = []

    def drain() -> bool:
        msg = consumer.poll(0.2)
        if msg is not None and msg.error() is None:
            if not seen:
                seen.append(time.perf_counter())  # time from the first record: group join excluded
            seen.append(msg)
            consumer.commit(msg, asynchronous=False)
        return len(seen) > n

    wait_until(drain, 300, f"{n} records consumed", interval=0)
    rate = n / (time.perf_counter() - seen[0])
    consumer.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--check", action="store_true", help="also time a full graded run of the reference")
    args = parser.parse_args()
    lab = find_lab("lab-1")
    rows = []
    with make_stack(lab.infra, "native") as stack, tempfile.TemporaryDirectory() as tmp:
        ns = stack.namespace(prefix="bench")
        env = ns.env()
        bootstrap = stack.url("kafka")
        raw_topic, topic = ns.topic("raw"), ns.topic("orders")
        ensure_topics(bootstrap, {raw_topic: 3, topic: 3, ns.topic("orders.dlq"): 1})
        raw_p = raw_produce(bootstrap, raw_topic, args.orders, args.concurrency)
        raw_c = raw_consume(bootstrap, raw_topic, args.orders)

        services = launch_services(lab.services, lab.reference, env, Path(tmp) / "logs")
        api, read_model = services["order_api"].start(), services["read_model"]
        try:
            api.wait_healthy()
            client = HttpWorkload(api.base_url, History())
            bodies = [{"customer_id": f"c-{i % 8}", "amount_cents": 100 + i} for i in range(args.orders)]
            with ThreadPoolExecutor(args.concurrency) as pool:
                api_t = timed(lambda: list(pool.map(
                    lambda b: client.send("place", "POST", "/orders", key=str(uuid.uuid4()), body=b), bodies)))
            api_rate = args.orders / api_t
            read_model.start()
            with psycopg.connect(ns.service_url("postgres"), autocommit=True) as conn:
                def count() -> int:
                    return conn.execute("SELECT count(*) FROM orders").fetchone()[0]
                first = wait_until(lambda: count() > 0 and time.perf_counter(), 120, "first order applied",
                                   ignore=(psycopg.Error,))
                wait_until(lambda: count() >= args.orders, 300, "all orders applied", interval=0.05)
                rm_rate = args.orders / (time.perf_counter() - first)
        finally:
            for s in services.values():
                s.stop()
    rows += [("order API (POST /orders, 201 after ack)", api_rate, raw_p, "raw produce + await ack"),
             ("read model (inbox + apply + commit)", rm_rate, raw_c, "raw consume + sync commit")]
    print(f"\nlab-1 benchmark: {args.orders} orders, concurrency {args.concurrency}, native runtime")
    print(f"{'what':45} {'per s':>9} {'raw per s':>10} {'ratio':>7}  baseline")
    for what, rate, raw, baseline in rows:
        print(f"{what:45} {rate:9.0f} {raw:10.0f} {rate / raw:7.2f}  {baseline}")
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            t = timed(lambda: grade(lab, lab.reference, "native", seed=1, out_dir=Path(tmp)))
        print(f"labkit check lab-1 (reference, native): {t:.1f}s wall time")


if __name__ == "__main__":
    main()
