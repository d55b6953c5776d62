"""The nemesis against real servers: crash points, the TCP fault proxy, duplicate injection."""
from __future__ import annotations

import os
import socket
import socketserver
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pika
import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from grader.nemesis.crashpoints import crash_env, crash_reached
from grader.nemesis.duplicates import inject_duplicates, read_all
from grader.nemesis.proxy import TcpProxy
from grader.kafka import CLIENT_DEFAULTS, QUIET, end_offsets, ensure_topics
from grader.stack import make_stack
from grader.stack.procs import free_port
from grader.wait import wait_until


def fill_topic(bootstrap: str, n: int, partitions: int = 1) -> str:
    topic = f"f-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, {topic: partitions})
    producer = Producer({"bootstrap.servers": bootstrap, **QUIET})
    for i in range(n):
        producer.produce(topic, key=f"k{i}", value=f"v{i}", headers={"h": b"x"})
    assert producer.flush(15) == 0
    return topic


def run_crashing(script: str, point: str, when: str, nth: int, marker, *args: str, timeout: float = 60,
                 extra_env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **crash_env(point, when, nth, marker), **(extra_env or {})}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], env=env, timeout=timeout,
                          capture_output=True, text=True)


def assert_killed_at(proc: subprocess.CompletedProcess, marker, point: str, when: str, nth: int) -> None:
    assert proc.returncode == -9, proc.stderr
    reached = crash_reached(marker)
    assert reached is not None and {k: reached[k] for k in ("point", "when", "nth")} == {
        "point": point, "when": when, "nth": nth}
    assert isinstance(reached["pid"], int)


# --- crash points: Kafka ---

CONSUME_AND_ACK = """
    import sys
    from confluent_kafka import Consumer
    bootstrap, topic, group, style = sys.argv[1:]
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                  "enable.auto.commit": style == "store_offsets", "enable.auto.offset.store": False,
                  "session.timeout.ms": 6000})
    c.subscribe([topic])
    while True:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            c.commit(m, asynchronous=False) if style == "commit" else c.store_offsets(m)
"""


@pytest.mark.parametrize("when, committed", [("before", 2), ("after", 3)])
def test_consumer_ack_crash_point_kills_at_the_nth_commit(native_stack, tmp_path, when, committed):
    bootstrap = native_stack.url("kafka")
    topic, group = fill_topic(bootstrap, 10), f"g-{uuid.uuid4().hex[:6]}"
    marker = tmp_path / "crash.json"
    proc = run_crashing(CONSUME_AND_ACK, "consumer-ack", when, 3, marker, bootstrap, topic, group, "commit")
    assert_killed_at(proc, marker, "consumer-ack", when, 3)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, **CLIENT_DEFAULTS})
    assert c.committed([TopicPartition(topic, 0)], timeout=10)[0].offset == committed  # offset = next to read
    c.close()


def test_consumer_ack_crash_point_counts_store_offsets(native_stack, tmp_path):
    bootstrap = native_stack.url("kafka")
    topic = fill_topic(bootstrap, 10)
    marker = tmp_path / "crash.json"
    proc = run_crashing(CONSUME_AND_ACK, "consumer-ack", "before", 4, marker, bootstrap, topic, "g-store", "store_offsets")
    assert_killed_at(proc, marker, "consumer-ack", "before", 4)


PRODUCE_AND_FLUSH = """
    import sys
    from confluent_kafka import Producer, SerializingProducer
    bootstrap, topic, kind = sys.argv[1:]
    p = (Producer if kind == "plain" else SerializingProducer)({"bootstrap.servers": bootstrap})
    for i in range(10):
        p.produce(topic, value=f"v{i}".encode())
        assert p.flush(15) == 0
"""


@pytest.mark.parametrize("point, when, kind, on_broker", [
    ("producer-flush", "before", "plain", 2),  # the 3rd record was queued, never flushed: lost with the process
    ("producer-flush", "after", "plain", 3),
    ("producer-produce", "before", "plain", 2),
    ("producer-flush", "after", "serializing", 3),
])
def test_producer_crash_points(native_stack, tmp_path, point, when, kind, on_broker):
    bootstrap = native_stack.url("kafka")
    topic = fill_topic(bootstrap, 0)
    marker = tmp_path / "crash.json"
    proc = run_crashing(PRODUCE_AND_FLUSH, point, when, 3, marker, bootstrap, topic, kind)
    assert_killed_at(proc, marker, point, when, 3)
    assert end_offsets(bootstrap, topic) == {0: on_broker}


# --- crash points: PostgreSQL, every way psycopg commits ---

COMMIT_STYLES = """
    import asyncio, sys, psycopg
    from psycopg_pool import ConnectionPool
    url, table, style = sys.argv[1:]
    insert = f"INSERT INTO {table} VALUES (%s)"
    if style == "commit":
        conn = psycopg.connect(url)
        for i in range(5):
            conn.execute("SELECT 1")  # read-only work before: still one commit per iteration
            conn.execute(insert, (i,))
            conn.commit()
            conn.commit()  # nothing open: not a commit
    elif style == "transaction":
        with psycopg.connect(url, autocommit=True) as conn:
            for i in range(5):
                with conn.transaction():
                    with conn.transaction():  # a savepoint: only the outermost block commits
                        conn.execute(insert, (i,))
    elif style == "connection-block":
        for i in range(5):
            with psycopg.connect(url) as conn:
                conn.execute(insert, (i,))
    elif style == "pool":
        with ConnectionPool(url, min_size=1, max_size=1) as pool:
            for i in range(5):
                with pool.connection() as conn:
                    conn.execute(insert, (i,))
    elif style == "async":
        async def main():
            async with await psycopg.AsyncConnection.connect(url) as conn:
                for i in range(3):
                    await conn.execute(insert, (i,))
                    await conn.commit()
                for i in range(3, 5):
                    async with conn.transaction():
                        await conn.execute(insert, (i,))
        asyncio.run(main())
"""


@pytest.mark.parametrize("style", ["commit", "transaction", "connection-block", "pool", "async"])
@pytest.mark.parametrize("when, rows", [("before", 1), ("after", 2)])
def test_db_commit_crash_point(native_stack, tmp_path, style, when, rows):
    url = native_stack.namespace(prefix="crash").database_url
    table = f"t_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (i int)")
    marker = tmp_path / "crash.json"
    proc = run_crashing(COMMIT_STYLES, "db-commit", when, 2, marker, url, table, style)
    assert_killed_at(proc, marker, "db-commit", when, 2)
    with psycopg.connect(url) as conn:
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == rows


def test_db_commit_async_counts_transaction_blocks(native_stack, tmp_path):
    url = native_stack.namespace(prefix="crash").database_url
    table = f"t_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (i int)")
    marker = tmp_path / "crash.json"
    proc = run_crashing(COMMIT_STYLES, "db-commit", "after", 4, marker, url, table, "async")  # 3 commits, 1 block
    assert_killed_at(proc, marker, "db-commit", "after", 4)
    with psycopg.connect(url) as conn:
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 4


# --- crash points: RabbitMQ ---

CONSUME_AND_BASIC_ACK = """
    import sys, pika
    url, queue = sys.argv[1:]
    channel = pika.BlockingConnection(pika.URLParameters(url)).channel()
    channel.basic_qos(prefetch_count=2)  # the next delivery is in flight when the process dies
    channel.basic_consume(queue, lambda ch, method, props, body: ch.basic_ack(method.delivery_tag))
    channel.start_consuming()
"""


@pytest.mark.parametrize("when, left", [("before", 8), ("after", 7)])
def test_amqp_ack_crash_point(native_stack, tmp_path, when, left):
    url = native_stack.url("rabbitmq")
    queue = f"q-{uuid.uuid4().hex[:8]}"
    conn = pika.BlockingConnection(pika.URLParameters(url))
    channel = conn.channel()
    channel.queue_declare(queue)
    for i in range(10):
        channel.basic_publish("", queue, f"m{i}".encode())
    marker = tmp_path / "crash.json"
    proc = run_crashing(CONSUME_AND_BASIC_ACK, "amqp-ack", when, 3, marker, url, queue)
    assert_killed_at(proc, marker, "amqp-ack", when, 3)
    # once the broker has noticed the dead consumer, its unacknowledged deliveries are back in the queue
    state = wait_until(lambda: (q := channel.queue_declare(queue, passive=True).method).consumer_count == 0 and q,
                       15, "the killed consumer to be gone")
    assert state.message_count == left
    conn.close()


# --- the sitecustomize itself ---

def test_without_labkit_crash_the_sitecustomize_does_nothing(tmp_path):
    env = {**os.environ, **crash_env("consumer-ack", "before", 1, tmp_path / "m")}
    del env["LABKIT_CRASH"]
    out = subprocess.run([sys.executable, "-c", "import confluent_kafka; print(confluent_kafka.Consumer.__module__)"],
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "cimpl"


def test_crash_env_keeps_pythonpath_and_chains_to_another_sitecustomize(tmp_path, monkeypatch):
    other = tmp_path / "other"
    other.mkdir()
    (other / "sitecustomize.py").write_text("import os\nos.environ['OTHER_SITE'] = 'ran'\n")
    monkeypatch.setenv("PYTHONPATH", str(other))
    env = {**os.environ, **crash_env("db-commit", "before", 1, tmp_path / "m")}
    assert env["PYTHONPATH"].split(os.pathsep)[1] == str(other)
    out = subprocess.run([sys.executable, "-c", "import os, psycopg; print(os.environ.get('OTHER_SITE'), "
                          "psycopg.Connection.commit.__wrapped__.__name__)"],
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.split() == ["ran", "commit"], out.stderr


def test_a_missing_library_or_a_bad_spec_leaves_the_process_alone(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "confluent_kafka.py").write_text("raise ImportError('not installed here')\n")
    for spec in ("consumer-ack:before:1", "nonsense"):
        env = {**os.environ, **crash_env("consumer-ack", "before", 1, tmp_path / "m"), "LABKIT_CRASH": spec}
        env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(blocker)])
        out = subprocess.run([sys.executable, "-c", "print('alive')"], env=env, capture_output=True, text=True,
                             timeout=30)
        assert out.returncode == 0 and out.stdout.strip() == "alive", out.stderr
    assert crash_reached(tmp_path / "m") is None


def test_crash_env_rejects_unknown_points(tmp_path):
    with pytest.raises(ValueError):
        crash_env("disk-fsync", "before", 1, tmp_path / "m")
    with pytest.raises(ValueError):
        crash_env("db-commit", "during", 1, tmp_path / "m")
    with pytest.raises(ValueError):
        crash_env("db-commit", "after", 0, tmp_path / "m")


# --- the TCP fault proxy ---

class Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)
        self.request.shutdown(socket.SHUT_WR)  # answer a half close with one


@pytest.fixture
def echo_server():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def echo_round_trip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := s.recv(65536):
            received += chunk
        return received


def test_proxy_forwards_half_closes_and_counts(echo_server):
    with TcpProxy("127.0.0.1", echo_server) as proxy:
        payload = os.urandom(300_000)
        assert echo_round_trip(proxy.port, payload) == payload
        assert echo_round_trip(proxy.port, b"ping") == b"ping"
        assert proxy.connections_total == 2
        wait_until(lambda: proxy.bytes_up == proxy.bytes_down == 300_004, 5, "counters to settle")


def test_proxy_delay_is_latency_each_way(echo_server):
    with TcpProxy("127.0.0.1", echo_server) as proxy:
        proxy.delay(150)
        t0 = time.monotonic()
        assert echo_round_trip(proxy.port, b"x" * 10) == b"x" * 10
        assert time.monotonic() - t0 >= 0.3  # 150 ms up, 150 ms down
        proxy.delay(0)
        t0 = time.monotonic()
        echo_round_trip(proxy.port, b"x")
        assert time.monotonic() - t0 < 0.3


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


def test_proxy_cut_and_heal_with_kafka_behind_it():
    """The broker advertises the proxy's port, so clients stay behind the proxy after bootstrap."""
    stack = make_stack(["kafka"], "native")
    kafka = stack.servers["kafka"]
    kafka.advertised_port = free_port()
    with stack, TcpProxy("127.0.0.1", kafka.port, listen_port=kafka.advertised_port) as proxy:
        bootstrap = f"127.0.0.1:{proxy.port}"
        topic = f"p-{uuid.uuid4().hex[:8]}"
        ensure_topics(bootstrap, {topic: 1})
        producer = Producer({"bootstrap.servers": bootstrap, "message.timeout.ms": 3000,
                             "reconnect.backoff.max.ms": 500, **QUIET})
        outcomes: list = []

        def send(value: str, timeout: float) -> None:
            producer.produce(topic, value=value, on_delivery=lambda err, msg: outcomes.append(err))
            producer.flush(timeout)

        send("before the cut", 15)
        proxy.cut()
        send("during the cut", 15)
        proxy.heal()
        send("after the heal", 30)
        assert outcomes[0] is None and outcomes[1] is not None and outcomes[2] is None
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "p", **CLIENT_DEFAULTS})
        consumer.assign([TopicPartition(topic, 0, 0)])
        values: list[bytes] = []
        wait_until(lambda: (m := consumer.poll(0.5)) is not None and m.error() is None and values.append(m.value())
                   or len(values) == 2, 20, "both delivered records through the proxy")
        consumer.close()
        assert values == [b"before the cut", b"after the heal"]
        assert proxy.connections_total >= 2


# --- duplicate injection ---

def test_duplicates_are_exact_copies_in_the_same_partition(native_stack):
    bootstrap = native_stack.url("kafka")
    topic = fill_topic(bootstrap, 12, partitions=3)
    originals = inject_duplicates(bootstrap, topic, 5, seed=4)
    assert len(originals) == 5 and len(set(originals)) == 5
    records = read_all(bootstrap, topic)
    assert len(records) == 17
    by_value: dict[bytes, list] = {}
    for m in records:
        by_value.setdefault(m.value(), []).append(m)
    copies = [ms for ms in by_value.values() if len(ms) == 2]
    assert len(copies) == 5
    for a, b in copies:
        assert (a.key(), a.partition(), a.headers(), a.timestamp()) == (b.key(), b.partition(), b.headers(), b.timestamp())
        assert (a.partition(), a.offset()) in originals and b.offset() > a.offset()


def test_duplicate_picks_depend_only_on_the_seed(native_stack):
    bootstrap = native_stack.url("kafka")
    first, second = fill_topic(bootstrap, 20, partitions=2), fill_topic(bootstrap, 20, partitions=2)
    assert inject_duplicates(bootstrap, first, 3, seed=7) == inject_duplicates(bootstrap, second, 3, seed=7)
    assert inject_duplicates(bootstrap, fill_topic(bootstrap, 0), 3, seed=7) == []


def test_read_all_ends_at_a_transaction_marker(native_stack):
    """A transactional producer leaves a commit marker as the last offset: no record ever has it."""
    bootstrap = native_stack.url("kafka")
    topic = fill_topic(bootstrap, 0)
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"tx-{uuid.uuid4().hex[:6]}", **QUIET})
    producer.init_transactions(15)
    producer.begin_transaction()
    for i in range(3):
        producer.produce(topic, key=f"k{i}", value=f"v{i}")
    producer.commit_transaction(15)
    assert end_offsets(bootstrap, topic) == {0: 4}  # three records and the marker
    t0 = time.monotonic()
    assert [m.value() for m in read_all(bootstrap, topic, timeout=20)] == [b"v0", b"v1", b"v2"]
    assert time.monotonic() - t0 < 10
    assert len(inject_duplicates(bootstrap, topic, 2, seed=1)) == 2
