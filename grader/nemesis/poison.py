"""Malformed records produced straight into a topic: a consumer must dead-letter them and go on."""
from __future__ import annotations

from confluent_kafka import Producer

from ..kafka import QUIET
from .base import Fault, Target


class Poison(Fault):
    """Produce `records` ((key, value) bytes) to `topic` with the grader's own producer."""

    kind = "poison"

    def __init__(self, topic: str, bootstrap: str, records: list[tuple[bytes, bytes]]) -> None:
        super().__init__(topic)
        self.bootstrap, self.records = bootstrap, records

    def describe(self) -> str:
        return f"{len(self.records)} malformed records into {self.target}"

    def inject(self, run: Target) -> None:
        producer = Producer({"bootstrap.servers": self.bootstrap, **QUIET})
        for key, value in self.records:
            producer.produce(self.target, key=key, value=value)
        self.effective = producer.flush(15) == 0
        self.detail = {"count": len(self.records), "keys": [k.decode(errors="replace") for k, _ in self.records]}

    def heal(self, run: Target) -> None:
        """Nothing to undo: the records stay in the topic, as they would in production."""
