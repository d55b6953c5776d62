"""The nemesis against real servers: crash points, the TCP fault proxy, duplicate injection."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid

import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from grader.faults.crashpoints import crash_env, crash_reached
from grader.faults.duplicates import inject_duplicates, read_all
from grader.faults.proxy import TcpProxy
from grader.kafka import CLIENT_DEFAULTS, ensure_topics
from grader.wait import wait_until


def fill_topic(bootstrap: str, n: int, partitions: int = 1) -> str:
    topic = f"f-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, {topic: partitions})
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(n):
        producer.produce(topic, key=f"k{i}", value=f"v{i}", headers={"h": b"x"})
    assert producer.flush(15) == 0
    return topic


CONSUME_AND_COMMIT = textwrap.dedent("""
    import os, sys
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": sys.argv[1], "group.id": sys.argv[3], "auto.offset.reset": "earliest",
                  "enable.auto.commit": False, "session.timeout.ms": 6000})
    c.subscribe([sys.argv[2]])
    while True:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            c.commit(m, asynchronous=False)
""")


@pytest.mark.parametrize("when, committed", [("before", 2), ("after", 3)])
def test_consumer_ack_crash_point_kills_at_the_nth_commit(native_stack, tmp_path, when, committed):
    bootstrap = native_stack.url("kafka")
    topic, group = fill_topic(bootstrap, 10), f"g-{uuid.uuid4().hex[:6]}"
    marker = tmp_path / "crash.json"
    env = {**os.environ, **crash_env("consumer-ack", when, 3, marker)}
    proc = subprocess.run([sys.executable, "-c", CONSUME_AND_COMMIT, bootstrap, topic, group], env=env, timeout=60)
    assert proc.returncode == -9
    assert crash_reached(marker)["nth"] == 3
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, **CLIENT_DEFAULTS})
    assert c.committed([TopicPartition(topic, 0)], timeout=10)[0].offset == committed  # offset = next to read
    c.close()


def test_db_commit_crash_point_with_a_transaction_block(native_stack, tmp_path):
    ns = native_stack.namespace(prefix="crash")
    script = textwrap.dedent("""
        import sys, psycopg
        with psycopg.connect(sys.argv[1], autocommit=True) as conn:
            conn.execute("CREATE TABLE t (i int)")
            for i in range(5):
                with conn.transaction():
                    conn.execute("INSERT INTO t VALUES (%s)", (i,))
    """)
    env = {**os.environ, **crash_env("db-commit", "after", 2, tmp_path / "m.json")}
    assert subprocess.run([sys.executable, "-c", script, ns.database_url], env=env, timeout=60).returncode == -9
    with psycopg.connect(ns.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 2


def test_without_labkit_crash_the_sitecustomize_does_nothing(tmp_path):
    env = {**os.environ, **crash_env("consumer-ack", "before", 1, tmp_path / "m")}
    del env["LABKIT_CRASH"]
    out = subprocess.run([sys.executable, "-c", "import confluent_kafka; print(confluent_kafka.Consumer.__module__)"],
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "cimpl"


def test_proxy_cut_heal_delay_reset_on_postgres(native_stack):
    port = int(native_stack.url("postgres").rsplit(":", 1)[1].split("/")[0])
    with TcpProxy("127.0.0.1", port) as proxy:
        url = f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres"
        conn = psycopg.connect(url, autocommit=True)
        assert conn.execute("SELECT 1").fetchone()[0] == 1
        proxy.reset()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        proxy.cut()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=2)
        proxy.heal()
        with psycopg.connect(url, autocommit=True) as conn:
            proxy.delay(200)
            t0 = time.monotonic()
            conn.execute("SELECT 1")
            assert time.monotonic() - t0 >= 0.4  # one chunk each way, 200 ms each
            proxy.delay(0)
        assert proxy.connections_total >= 2 and proxy.bytes_up > 0 and proxy.bytes_down > 0


def test_duplicates_are_exact_copies_in_the_same_partition(native_stack):
    bootstrap = native_stack.url("kafka")
    topic = fill_topic(bootstrap, 12, partitions=3)
    originals = inject_duplicates(bootstrap, topic, 5, seed=4)
    assert len(originals) == 5
    records = read_all(bootstrap, topic)
    assert len(records) == 17
    by_value: dict[bytes, list] = {}
    for m in records:
        by_value.setdefault(m.value(), []).append(m)
    copies = [ms for ms in by_value.values() if len(ms) == 2]
    assert len(copies) == 5
    for a, b in copies:
        assert (a.key(), a.partition(), a.headers()) == (b.key(), b.partition(), b.headers())
