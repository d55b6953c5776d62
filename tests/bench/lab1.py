"""Lab-1 benchmark (not a test): the reference services against raw confluent-kafka, same round.

    python -m tests.bench.lab1 [--orders 1000] [--concurrency 8] [--rounds 3] [--smoke]

Throughput of the order API vs raw produce-and-await-ack at the same concurrency (target >= 0.5),
and of the read model vs a raw consume-and-commit loop.
"""
from __future__ import annotations

import json
import sys
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
from grader.history import History
from grader.stack import make_stack
from grader.wait import wait_until
from grader.workloads.http import HttpWorkload
from tests.bench.figures import Figure, main_for

SIZES = {"orders": 1000, "concurrency": 8}
SMOKE = {"orders": 20, "concurrency": 2}


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


def one_round(orders: int, concurrency: int) -> list[Figure]:
    lab = find_lab("lab-1")
    with make_stack(lab.infra, "native") as stack, tempfile.TemporaryDirectory() as tmp:
        ns = stack.namespace(prefix="bench")
        env = ns.env()
        bootstrap = stack.url("kafka")
        raw_topic, topic = ns.topic("raw"), ns.topic("orders")
        ensure_topics(bootstrap, {raw_topic: 3, topic: 3, ns.topic("orders.dlq"): 1})
        raw_p = raw_produce(bootstrap, raw_topic, orders, concurrency)
        raw_c = raw_consume(bootstrap, raw_topic, orders)

        services = launch_services(lab.services, lab.reference, env, Path(tmp) / "logs")
        api, read_model = services["order_api"].start(), services["read_model"]
        try:
            api.wait_healthy()
            client = HttpWorkload(api.base_url, History())
            bodies = [{"customer_id": f"c-{i % 8}", "amount_cents": 100 + i} for i in range(orders)]
            with ThreadPoolExecutor(concurrency) as pool:
                api_t = timed(lambda: list(pool.map(
                    lambda b: client.send("place", "POST", "/orders", key=str(uuid.uuid4()), body=b), bodies)))
            api_rate = orders / api_t
            read_model.start()
            with psycopg.connect(ns.service_url("postgres"), autocommit=True) as conn:
                def count() -> int:
                    return conn.execute("SELECT count(*) FROM orders").fetchone()[0]
                first = wait_until(lambda: count() > 0 and time.perf_counter(), 120, "first order applied",
                                   ignore=(psycopg.Error,))
                wait_until(lambda: count() >= orders, 300, "all orders applied", interval=0.05)
                rm_rate = orders / (time.perf_counter() - first)
        finally:
            for s in services.values():
                s.stop()
    print(f"  order API {api_rate:.0f}/s vs raw produce+ack {raw_p:.0f}/s; read model {rm_rate:.0f}/s vs raw "
          f"consume+commit {raw_c:.0f}/s ({orders} orders, concurrency {concurrency})", flush=True)
    return [Figure("order API: POST /orders, 201 after the ack", api_rate, "orders/s", "raw produce + await ack", raw_p,
                   target=">= 0.5"),
            Figure("read model: inbox + apply + commit", rm_rate, "records/s", "raw consume + sync commit", raw_c)]


if __name__ == "__main__":
    main_for("lab1", sys.modules[__name__])
