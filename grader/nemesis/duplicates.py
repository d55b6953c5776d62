"""Duplicate delivery, injected straight into a topic: copies of existing records, same partition.

What a producer retry or a redelivery looks like to a consumer: the same key, value, headers and
(create) timestamp again, at a later offset of the same partition.
"""
from __future__ import annotations

import random
import uuid

from confluent_kafka import TIMESTAMP_CREATE_TIME, Consumer, KafkaError, Message, Producer, TopicPartition

from ..kafka import CLIENT_DEFAULTS, QUIET, end_offsets
from ..wait import wait_until
from .base import Fault, Need, Target


def read_all(bootstrap: str, topic: str, timeout: float = 30) -> list[Message]:
    """Every record currently in the topic (up to its end offsets at call time), all partitions."""
    ends = end_offsets(bootstrap, topic, timeout)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"labkit-dup-{uuid.uuid4()}",
                         "enable.auto.commit": False, "enable.partition.eof": True, **CLIENT_DEFAULTS})
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p, end in ends.items() if end > 0])
        records: list[Message] = []
        done = {p for p, end in ends.items() if end == 0}

        def drained() -> bool:
            msg = consumer.poll(0.5)
            if msg is not None:
                p, offset = msg.partition(), msg.offset()
                if msg.error() is None and offset < ends[p]:
                    records.append(msg)
                # the end is reached at its last record or, if that is a transaction marker, at EOF
                if (msg.error() is None and offset >= ends[p] - 1) or (
                        msg.error() is not None and msg.error().code() == KafkaError._PARTITION_EOF
                        and offset >= ends[p]):
                    done.add(p)
            return len(done) == len(ends)

        wait_until(drained, timeout, f"all records of {topic}", interval=0)
        return records
    finally:
        consumer.close()


def inject_duplicates(bootstrap: str, topic: str, count: int, seed: int,
                      keys: set[str] | None = None) -> list[tuple[int, int]]:
    """Re-produce `count` randomly chosen records (seeded: the same seed picks the same records)
    with the same key, value, headers and create timestamp to the same partition; only records with
    one of `keys` if given. Returns the (partition, offset) of the originals, in the order copied."""
    records = sorted((m for m in read_all(bootstrap, topic)
                      if keys is None or (m.key() or b"").decode(errors="replace") in keys),
                     key=lambda m: (m.partition(), m.offset()))
    chosen = random.Random(seed).sample(records, min(count, len(records)))
    producer = Producer({"bootstrap.servers": bootstrap, **QUIET})
    failed: list[str] = []

    def delivered(err, _msg) -> None:
        if err is not None:
            failed.append(str(err))

    for msg in chosen:
        kind, ts = msg.timestamp()
        producer.produce(topic, key=msg.key(), value=msg.value(), headers=msg.headers() or None,
                         partition=msg.partition(), timestamp=ts if kind == TIMESTAMP_CREATE_TIME else 0,
                         on_delivery=delivered)
    if producer.flush(30) or failed:
        raise RuntimeError(f"could not inject duplicates into {topic}: "
                           f"{failed[0] if failed else 'the broker did not acknowledge'}")
    return [(msg.partition(), msg.offset()) for msg in chosen]


class Duplicates(Fault):
    """Copies of `count` records of a topic (seeded picks), appended to the same partitions.

    Probes the consumer's idempotency: a producer retry or a redelivery after a lost commit looks
    exactly like this. Effective if a record was copied; the originals are in the detail.
    """

    kind = "duplicates"

    def __init__(self, topic: str, count: int, seed: int, keys: set[str] | None = None) -> None:
        super().__init__(topic)
        self.count, self.seed, self.keys = count, seed, keys

    def needs(self) -> list[Need]:
        return [Need("server", "kafka")]

    def inject(self, run: Target) -> None:
        originals = inject_duplicates(run.stack.url("kafka"), self.target, self.count, self.seed, self.keys)
        self.detail["originals"] = [list(po) for po in originals]  # [partition, offset], JSON-friendly
        self.effective = bool(originals)

    def heal(self, run: Target) -> None:
        pass

    def describe(self) -> str:
        return (f"append copies of {self.count} records of {self.target} (same key, value, headers, "
                f"partition; seed {self.seed})")
