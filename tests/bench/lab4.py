"""Lab-4 benchmark (not a test): the reference worker and publisher against raw pika, same run.

    python -m tests.bench.lab4 [--messages 2000] [--publishers 32] [--rounds 3] [--smoke]

Prints (1) the worker's throughput (thread pool, charge row, ack via add_callback_threadsafe) vs a
raw pika consume/ack loop, and vs a raw loop doing the same INSERT before each ack; (2) publisher
throughput with asynchronous confirms (the reference ConfirmingPublisher, many in flight) vs one
publish-and-wait-for-confirm at a time. Targets: worker >= 0.6 of raw consume + INSERT + ack, async
confirms >= 5x one-by-one.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pika
import psycopg

from grader.lab import find_lab
from grader.launch import launch_services
from grader.stack import make_stack
from grader.wait import wait_until
from tests.bench.figures import Figure, main_for

SIZES = {"messages": 2000, "publishers": 32}
SMOKE = {"messages": 40, "publishers": 4}


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def payment(i: int) -> bytes:
    return json.dumps({"payment_id": f"b-{i}", "account": f"acc-{i % 20}", "amount_cents": 100 + i}).encode()


def fill(url: str, queue: str, n: int, exchange: str = "", routing_key: str | None = None) -> None:
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        channel = conn.channel()
        channel.confirm_delivery()
        for i in range(n):
            channel.basic_publish(exchange, routing_key or queue, payment(i),
                                  pika.BasicProperties(delivery_mode=2, message_id=f"b-{i}",
                                                       headers={"x-attempt": 1}))


def raw_consume(url: str, queue: str, n: int, prefetch: int, effect=None) -> float:
    """Consume n messages, ack each (after `effect(body)` if given): messages per second."""
    done = [0, 0.0]
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        channel = conn.channel()
        channel.basic_qos(prefetch_count=prefetch)

        def on_message(ch, method, _props, body) -> None:
            if not done[0]:
                done[1] = time.perf_counter()
            if effect is not None:
                effect(body)
            ch.basic_ack(method.delivery_tag)
            done[0] += 1
            if done[0] >= n:
                ch.stop_consuming()

        channel.basic_consume(queue, on_message)
        channel.start_consuming()
    return n / (time.perf_counter() - done[1])


def one_by_one(url: str, exchange: str, routing_key: str, n: int) -> float:
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        channel = conn.channel()
        channel.confirm_delivery()
        t = timed(lambda: [channel.basic_publish(exchange, routing_key, payment(i),
                                                 pika.BasicProperties(delivery_mode=2), mandatory=True)
                           for i in range(n)])
    return n / t


def async_confirms(exchange: str, routing_key: str, n: int, threads: int) -> float:
    from services.payments_api.publisher import ConfirmingPublisher

    publisher = ConfirmingPublisher(exchange, routing_key)
    try:
        publisher.publish(payment(-1), {}, "warm-up", timeout=30)
        with ThreadPoolExecutor(threads) as pool:
            t = timed(lambda: list(pool.map(lambda i: publisher.publish(payment(i), {}, f"b-{i}", timeout=60),
                                            range(n))))
    finally:
        publisher.close()
    return n / t


def one_round(messages: int, publishers: int) -> list[Figure]:
    n = messages
    lab = find_lab("lab-4")
    with make_stack(lab.infra, "native") as stack, tempfile.TemporaryDirectory() as tmp:
        ns = stack.namespace(prefix="bench")
        env = ns.env()
        os.environ.update(AMQP_URL=env["AMQP_URL"], LAB_NAMESPACE=env["LAB_NAMESPACE"])
        from services.common import amqp

        url, prefetch = env["AMQP_URL"], 8
        with pika.BlockingConnection(pika.URLParameters(url)) as conn:
            channel = conn.channel()
            amqp.declare_topology(channel)
            channel.queue_declare(ns.queue("raw"), durable=True, arguments={"x-queue-type": "quorum"})
            channel.queue_bind(ns.queue("raw"), amqp.exchange(), routing_key="raw")
        with psycopg.connect(ns.service_url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE TABLE raw_charges (payment_id text PRIMARY KEY, amount_cents bigint)")

        fill(url, ns.queue("raw"), n)
        raw_ack = raw_consume(url, ns.queue("raw"), n, prefetch)
        fill(url, ns.queue("raw"), n)
        with psycopg.connect(ns.service_url("postgres"), autocommit=True) as db:
            def insert(body: bytes) -> None:
                p = json.loads(body)
                db.execute("INSERT INTO raw_charges VALUES (%s, %s) ON CONFLICT DO NOTHING",
                           (p["payment_id"], p["amount_cents"]))
            raw_effect = raw_consume(url, ns.queue("raw"), n, prefetch, insert)

        fill(url, amqp.work_queue(), n)
        services = launch_services(lab.services, lab.reference, {**env, "PREFETCH": str(prefetch)}, Path(tmp) / "logs")
        worker = services["payment_worker"].start()
        try:
            with psycopg.connect(ns.service_url("postgres"), autocommit=True) as conn:
                def count() -> int:
                    return conn.execute("SELECT count(*) FROM charges").fetchone()[0]
                first = wait_until(lambda: count() > 0 and time.perf_counter(), 120, "first charge",
                                   ignore=(psycopg.Error,))
                wait_until(lambda: count() >= n, 300, "all charged", interval=0.05)
                worker_rate = n / (time.perf_counter() - first)
        finally:
            worker.stop()

        sync_rate = one_by_one(url, amqp.exchange(), "raw", n)
        async_rate = async_confirms(amqp.exchange(), "raw", n, publishers)

    print(f"  lab-4: raw consume+ack {raw_ack:.0f}/s, raw consume+INSERT+ack {raw_effect:.0f}/s, worker "
          f"{worker_rate:.0f}/s; publish one by one {sync_rate:.0f}/s, async confirms {async_rate:.0f}/s "
          f"({n} messages, prefetch {prefetch})", flush=True)
    return [Figure("worker (pool, charge row, threadsafe ack)", worker_rate, "msgs/s", "raw consume + INSERT + ack",
                   raw_effect, target=">= 0.6"),
            Figure("worker, against raw consume + ack", worker_rate, "msgs/s", "raw consume + ack", raw_ack),
            Figure(f"publish, async confirms ({publishers} threads)", async_rate, "msgs/s",
                   "one confirm at a time", sync_rate, target=">= 5"),
            Figure("raw pika consume + ack", raw_ack, "msgs/s")]


if __name__ == "__main__":
    main_for("lab4", sys.modules[__name__])
