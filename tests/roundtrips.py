"""Real round trips against one server of each kind, shared by the native and docker tests."""
from __future__ import annotations

import uuid

import pika
import psycopg
import redis
from confluent_kafka import Consumer, Producer, TopicPartition

from grader.kafka import ensure_topics
from grader.wait import wait_until

KAFKA_CLIENT = {"session.timeout.ms": 6000}


def kafka_roundtrip(bootstrap: str) -> None:
    """Produce (idempotent, acks=all), consume in a group, commit, read the committed offsets back."""
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


def postgres_roundtrip(url: str) -> None:
    """SQL, then a logical replication slot: peek the change, advance past it."""
    with psycopg.connect(url, autocommit=True) as conn:
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


def redis_roundtrip(url: str) -> None:
    client = redis.Redis.from_url(url)
    client.set("probe", "value")
    assert client.get("probe") == b"value"


def rabbitmq_roundtrip(url: str) -> None:
    """Publish with confirms to a quorum queue, get, ack: the queue is empty after."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
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


ROUNDTRIPS = {"kafka": kafka_roundtrip, "postgres": postgres_roundtrip, "redis": redis_roundtrip,
              "rabbitmq": rabbitmq_roundtrip}
