"""Small Kafka helpers the grader needs around a run: topics and consumer-group lag."""
from __future__ import annotations

import uuid

from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from .wait import wait_until

QUIET = {"log_level": 0}  # the grader's own clients: broker hiccups during faults are expected, not news
CLIENT_DEFAULTS = {"session.timeout.ms": 6000, **QUIET}  # Tansu: group joins take session.timeout/2


def ensure_topics(bootstrap: str, topics: dict[str, int], timeout: float = 30) -> None:
    """Create missing topics (name -> partitions) and wait until metadata shows them."""
    admin = AdminClient({"bootstrap.servers": bootstrap, **QUIET})
    existing = set(admin.list_topics(timeout=timeout).topics)
    new = [NewTopic(name, num_partitions=parts, replication_factor=1)
           for name, parts in topics.items() if name not in existing]
    if new:
        for name, future in admin.create_topics(new, operation_timeout=timeout).items():
            future.result(timeout)  # keep `admin` referenced until every future resolved
    wait_until(lambda: set(topics) <= set(admin.list_topics(timeout=5).topics), timeout,
               f"topics {sorted(topics)} in metadata")


def end_offsets(bootstrap: str, topic: str, timeout: float = 10) -> dict[int, int]:
    """partition -> offset after its last record.

    Not `get_watermark_offsets`: Tansu answers ListOffsets(latest) with the last *batch's* base
    offset + 1. Fetch reports the true end, so read each partition's last batch until EOF.
    """
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"labkit-end-{uuid.uuid4()}",
                         "enable.auto.commit": False, "enable.partition.eof": True, **CLIENT_DEFAULTS})
    try:
        partitions = consumer.list_topics(topic, timeout=timeout).topics[topic].partitions
        starts = {p: max(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1] - 1, 0)
                  for p in partitions}
        consumer.assign([TopicPartition(topic, p, o) for p, o in starts.items()])
        ends: dict[int, int] = {}

        def all_at_eof() -> bool:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is not None and msg.error().code() == KafkaError._PARTITION_EOF:
                ends[msg.partition()] = msg.offset()
            return len(ends) == len(partitions)

        wait_until(all_at_eof, timeout, f"the end of {topic}", interval=0)
        return ends
    finally:
        consumer.close()


def group_lag(bootstrap: str, group: str, topic: str, timeout: float = 10) -> int:
    """Records in `topic` not yet committed by `group` (a partition it never committed counts whole)."""
    ends = end_offsets(bootstrap, topic, timeout)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                         **CLIENT_DEFAULTS})
    try:
        committed = consumer.committed([TopicPartition(topic, p) for p in ends], timeout=timeout)
        # max(.., 0): the group may commit past an end we read a moment earlier
        return sum(max(end - max(tp.offset, 0), 0) for tp, end in zip(committed, ends.values()))
    finally:
        consumer.close()
