"""Duplicate delivery, injected straight into a topic: copies of existing records, same partition."""
from __future__ import annotations

import random
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition

from ..kafka import CLIENT_DEFAULTS, QUIET, end_offsets
from ..wait import wait_until


def read_all(bootstrap: str, topic: str, timeout: float = 30) -> list:
    """Every record currently in the topic (up to its end offsets at call time)."""
    ends = end_offsets(bootstrap, topic, timeout)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"labkit-dup-{uuid.uuid4()}",
                         "enable.auto.commit": False, **CLIENT_DEFAULTS})
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p, end in ends.items() if end > 0])
        records, done = [], {p for p, end in ends.items() if end == 0}

        def drained() -> bool:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None and msg.offset() < ends[msg.partition()]:
                records.append(msg)
                if msg.offset() == ends[msg.partition()] - 1:
                    done.add(msg.partition())
            return len(done) == len(ends)

        wait_until(drained, timeout, f"all records of {topic}", interval=0)
        return records
    finally:
        consumer.close()


def inject_duplicates(bootstrap: str, topic: str, count: int, seed: int) -> list[tuple[int, int]]:
    """Re-produce `count` randomly chosen records (seeded) with the same key, value and headers."""
    records = sorted(read_all(bootstrap, topic), key=lambda m: (m.partition(), m.offset()))  # seed -> same picks
    chosen = random.Random(seed).sample(records, min(count, len(records)))
    producer = Producer({"bootstrap.servers": bootstrap, **QUIET})
    for msg in chosen:
        producer.produce(topic, key=msg.key(), value=msg.value(), headers=msg.headers() or None,
                         partition=msg.partition())
    if producer.flush(30):
        raise RuntimeError(f"could not inject duplicates into {topic}: the broker did not acknowledge")
    return [(msg.partition(), msg.offset()) for msg in chosen]
