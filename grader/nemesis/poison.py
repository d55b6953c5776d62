"""Malformed records produced straight into a topic: a consumer must dead-letter them and go on."""
from __future__ import annotations

import random

from confluent_kafka import Producer

from ..kafka import QUIET
from .base import Fault, Target


class Poison(Fault):
    """Produce `records` ((key, value) bytes) to `topic` with the grader's own producer."""

    kind = "poison"

    def __init__(self, topic: str, bootstrap: str, records: list[tuple[bytes, bytes]], seed: int = 0) -> None:
        super().__init__(topic)
        self.bootstrap, self.records = bootstrap, records
        # each record carries a traceparent of the grader's: its processing span must say ERROR
        rng = random.Random(seed ^ 0xBAD)
        self.traces = [(f"{rng.getrandbits(128) or 1:032x}", f"{rng.getrandbits(64) or 1:016x}") for _ in records]

    def describe(self) -> str:
        return f"{len(self.records)} malformed records into {self.target}"

    def inject(self, run: Target) -> None:
        producer = Producer({"bootstrap.servers": self.bootstrap, **QUIET})
        for (key, value), (trace_id, span_id) in zip(self.records, self.traces):
            producer.produce(self.target, key=key, value=value, headers=[("traceparent", f"00-{trace_id}-{span_id}-01")])
        self.effective = producer.flush(15) == 0
        self.detail = {"count": len(self.records), "keys": [k.decode(errors="replace") for k, _ in self.records],
                       "traced": [{"key": k.decode(errors="replace"), "trace_id": t}
                                  for (k, _), (t, _) in zip(self.records, self.traces)]}

    def heal(self, run: Target) -> None:
        """Nothing to undo: the records stay in the topic, as they would in production."""
