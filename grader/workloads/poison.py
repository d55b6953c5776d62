"""The poison phase (labs with a consumer and a dead-letter topic; judged by grader/checks/poison.py):
malformed records produced straight into the consumer's topic, then one good request, which must
still be applied; the dead-letter topic is read back with the grader's own client."""
from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Callable

from ..nemesis.poison import Poison
from ..observe import observe_topic
from .http import Reply

if TYPE_CHECKING:
    from ..runner import Run


def poison_phase(run: "Run", topic: str, dlq: str, consumer: str, place: Callable[[], Reply],
                 applied: Callable[[Reply], bool]) -> None:
    records = [(b"poison-1", b"this is not JSON"),
               (b"poison-2", json.dumps({"type": "OrderPlaced", "event_id": str(uuid.uuid4())}).encode())]
    Poison(topic, run.kafka, records, run.seed).apply(run)
    reply = place()
    follow_up = reply.ok and applied(reply)
    observe_topic(run.history, "dead-letters", run.kafka, dlq, timeout=20)
    service = run.services[consumer]
    run.history.observe("after-poison", consumer="running" if service.alive() else
                        f"exited with code {service.exit_code()}", follow_up_applied=follow_up)
