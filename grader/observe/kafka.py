"""Reading topics and consumer groups with the grader's own Kafka clients."""
from __future__ import annotations

from typing import Callable

from ..history import History
from ..kafka import group_lag
from ..nemesis.duplicates import read_all


def group_lag_is_zero(bootstrap: str, group: str, topic: str) -> Callable[[], bool]:
    """A quiesce condition: `group` has committed everything in `topic`."""
    return lambda: group_lag(bootstrap, group, topic) == 0


def observe_topic(history: History, what: str, bootstrap: str, topic: str, timeout: float = 30) -> list[dict]:
    """Every record of `topic` (key, value, headers, partition, offset) as one observation."""
    records = [{"partition": m.partition(), "offset": m.offset(),
                "key": (m.key() or b"").decode(errors="replace"),
                "value": (m.value() or b"").decode(errors="replace"),
                "headers": {k: (v or b"").decode(errors="replace") for k, v in (m.headers() or [])}}
               for m in read_all(bootstrap, topic, timeout)]
    history.observe(what, topic=topic, records=records)
    return records
