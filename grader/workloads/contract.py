"""Contract probes for an order API with idempotency keys (labs 1 and 2).

Each probe is an operation tagged `probe=<name>`; grader/checks/contract.py judges them from the
history. The concurrent-key probe needs a slow broker (a Delay fault on the path the API uses);
replays after a restart need the API SIGKILLed and restarted between the answer and its retry.
"""
from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from .orders import Orders, acknowledged_cancels, acknowledged_requests

if TYPE_CHECKING:
    from ..nemesis import Fault
    from ..runner import Run


def probe_basics(orders: Orders) -> None:
    body = orders.body()
    orders.place(None, body, probe="no-key")
    orders.client.send("place", "POST", "/orders", key=orders.key(), raw=b'{"customer_id": "c-1", "amount_cents": ',
                       probe="malformed")
    orders.place(orders.key(), {"customer_id": "", "amount_cents": -5}, probe="invalid")
    key = orders.key()
    orders.place(key, body, probe="new")
    orders.place(key, body, probe="replay")
    orders.place(key, {**body, "amount_cents": body["amount_cents"] + 1}, probe="reuse")
    orders.cancel(str(uuid.UUID(int=orders.rng.getrandbits(128), version=4)), orders.key(), probe="cancel-unknown")


def probe_concurrent_key(run: "Run", orders: Orders, slow_broker: "Fault") -> None:
    """Two requests with one key while the broker is slow: one must win, the other get 409."""
    key, body = orders.key(), orders.body()
    with slow_broker.active(run) as slowed:
        if slowed:
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(lambda _: orders.place(key, body, probe="concurrent"), range(2)))


def probe_replay_after_restart(run: "Run", orders: Orders, restart: "Fault", count: int) -> None:
    """Acknowledged requests sent again after the API was SIGKILLed and restarted: the stored
    answers must survive the restart (keys kept in the database, not in memory). Cancels too:
    every operation the API acknowledges."""
    chosen = acknowledged_requests(run.history, count, run.rng)
    cancels = acknowledged_cancels(run.history, max(1, count // 2), run.rng)
    if chosen and restart.apply(run):
        orders.retry_keys(chosen, probe="replay-after-restart")
        for order_id, key in cancels:
            orders.cancel(order_id, key, probe="replay-after-restart")
