"""Lab 1's read-model consumer plumbing: the shared ConsumerLoop (services.common.consumer_loop)
bound to the order topic, its dead-letter topic and the read model's tables. Subclasses implement
handle(msg); self.apply() changes the read model for one event.
"""
from __future__ import annotations

import psycopg
from opentelemetry import trace

from services.common.config import namespaced
from services.common.consumer_loop import ConsumerLoop, run_loop
from services.common.log import get_logger

from .projection import apply_event, create_schema

log = get_logger("read_model")
tracer = trace.get_tracer("read_model")


class ReadModelLoop(ConsumerLoop):
    service = "read_model"
    schema = ""  # extra tables a subclass needs (e.g. the inbox)
    max_db_attempts = 10  # then exit: the record is redelivered to the next consumer

    def __init__(self) -> None:
        self.topic = namespaced("orders")
        super().__init__([self.topic], namespaced("read-model"), namespaced("orders.dlq"))

    def setup(self, conn: psycopg.Connection) -> None:
        create_schema(conn, self.schema)

    def apply(self, conn: psycopg.Connection, event: dict) -> None:
        """The event's effects on the read model, inside the caller's transaction."""
        apply_event(conn, event)


def run_consumer(cls: type[ReadModelLoop]) -> None:
    run_loop(cls)
