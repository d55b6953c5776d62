"""Small Kafka helpers the grader needs around a run: topics and consumer-group lag."""
from __future__ import annotations

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from .wait import wait_until

CLIENT_DEFAULTS = {"session.timeout.ms": 6000}  # Tansu: group joins take session.timeout/2


def ensure_topics(bootstrap: str, topics: dict[str, int], timeout: float = 30) -> None:
    """Create missing topics (name -> partitions) and wait until metadata shows them."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = set(admin.list_topics(timeout=timeout).topics)
    new = [NewTopic(name, num_partitions=parts, replication_factor=1)
           for name, parts in topics.items() if name not in existing]
    if new:
        for name, future in admin.create_topics(new, operation_timeout=timeout).items():
            future.result(timeout)  # keep `admin` referenced until every future resolved
    wait_until(lambda: set(topics) <= set(admin.list_topics(timeout=5).topics), timeout,
               f"topics {sorted(topics)} in metadata")


def group_lag(bootstrap: str, group: str, topic: str, timeout: float = 10) -> int:
    """Messages in `topic` not yet committed by `group` (uncommitted partitions count from 0)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                         **CLIENT_DEFAULTS})
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics[topic]
        parts = [TopicPartition(topic, p) for p in meta.partitions]
        committed = {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=timeout)}
        lag = 0
        for tp in parts:
            low, high = consumer.get_watermark_offsets(tp, timeout=timeout)
            done = committed.get(tp.partition, -1)
            lag += high - (done if done >= 0 else low)
        return lag
    finally:
        consumer.close()
