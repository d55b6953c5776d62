"""The order workload (labs 1 and 2): seeded order plans, paced load with client retries and
cancels, contract probes, and retries of acknowledged requests. Everything goes into the history
as operations (f = "place" | "cancel"); checkers read it back from there, never from here.
"""
from __future__ import annotations

import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..history import History
from ..launch import ServiceFailed
from .http import HttpWorkload, Reply

# A load that got no order acknowledged for this long cannot prove anything that needs one: the run
# stops there (every check that needs the load is an ERROR saying why) instead of playing its faults
# against an API that never works - a broken submission costs seconds, not a full run.
GIVE_UP_AFTER_S = 30.0

if TYPE_CHECKING:
    from ..runner import Run
    from ..scenario import PhaseContext


@dataclass(frozen=True)
class OrderPlan:
    key: str
    body: dict
    retry: bool  # the client sends the same request again (it did not trust the first answer)
    cancel: bool
    cancel_key: str


class Orders:
    """Seeded order traffic against one API. Thread-safe: the plan is drawn under a lock."""

    def __init__(self, client: HttpWorkload, seed: int, customers: int = 8, retry_rate: float = 0.15,
                 cancel_rate: float = 0.2) -> None:
        self.client = client
        self.rng = random.Random(seed)
        self.customers, self.retry_rate, self.cancel_rate = customers, retry_rate, cancel_rate
        self._lock = threading.Lock()
        self.acknowledged = 0  # place requests answered 2xx (a progress gauge; verdicts read the history)
        self.statuses: dict[int, int] = {}  # how place requests were answered (0: no answer)

    def key(self) -> str:
        with self._lock:
            return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def body(self) -> dict:
        with self._lock:
            return {"customer_id": f"c-{self.rng.randrange(self.customers)}",
                    "amount_cents": self.rng.randrange(100, 10_000)}

    def plan(self) -> OrderPlan:
        key, body = self.key(), self.body()
        with self._lock:
            retry, cancel = self.rng.random() < self.retry_rate, self.rng.random() < self.cancel_rate
        return OrderPlan(key, body, retry, cancel, self.key())

    # --- operations ------------------------------------------------------------------------
    def place(self, key: str | None, body: dict, **meta) -> Reply:
        reply = self.client.send("place", "POST", "/orders", key=key, body=body, **meta)
        with self._lock:
            self.acknowledged += reply.ok
            self.statuses[reply.status] = self.statuses.get(reply.status, 0) + 1
        return reply

    def cancel(self, order_id: str, key: str, **meta) -> Reply:
        return self.client.send("cancel", "POST", f"/orders/{order_id}/cancel", key=key, body={}, **meta)

    def play(self, plan: OrderPlan, **meta) -> None:
        reply = self.place(plan.key, plan.body, **meta)
        if plan.retry:
            again = self.place(plan.key, plan.body, retry=True, **meta)
            reply = reply if reply.ok else again
        if plan.cancel and reply.ok and isinstance(reply.body, dict) and reply.body.get("order_id"):
            self.cancel(str(reply.body["order_id"]), plan.cancel_key, **meta)

    # --- steps -----------------------------------------------------------------------------
    def load(self, ctx: "PhaseContext", orders: int, rate: float, concurrency: int) -> int:
        """At least `orders` plans at about `rate` per second, and on until the phase's nemesis is
        through (or the phase is out of time). Returns how many plans were played. Raises
        ServiceFailed when no order was acknowledged in its first GIVE_UP_AFTER_S seconds."""
        sent, started, pace = 0, time.monotonic(), threading.Event()
        acked_before = self.acknowledged
        with ThreadPoolExecutor(concurrency) as pool:
            while (sent < orders or not ctx.nemesis_done()) and not ctx.out_of_time():
                wave = [self.plan() for _ in range(concurrency * 2)]
                list(pool.map(self.play, wave))
                sent += len(wave)
                if self.acknowledged == acked_before and time.monotonic() - started > GIVE_UP_AFTER_S:
                    raise ServiceFailed(self._no_progress(sent, time.monotonic() - started))
                pace.wait(max(0.0, started + sent / rate - time.monotonic()))  # hold the rate
        return sent

    def _no_progress(self, sent: int, seconds: float) -> str:
        answers = ", ".join(f"{n} x {status or 'no answer'}" for status, n in sorted(self.statuses.items()))
        return (f"the API acknowledged none of {sent} orders in {seconds:.0f} s of load (answers: {answers}); "
                f"the faults and checks that follow need acknowledged orders, so the run stopped here "
                f"(try POST /orders by hand, and read the service's log)")

    def burst(self, count: int, then: Callable[[], None] | None = None, after: float = 1.5,
              cancel: list[str] = (), **meta) -> list[OrderPlan]:
        """`count` orders at once (e.g. during a fault), no retries or cancels of their own, and a
        cancel of each order in `cancel` (acknowledged earlier) alongside them: every operation the
        API acknowledges meets the fault. `then` runs once all were answered or `after` seconds
        passed, whichever is first (e.g. SIGKILL the API while the requests are still in flight)."""
        plans = [OrderPlan(self.key(), self.body(), False, False, "") for _ in range(count)]
        cancels = [(order_id, self.key()) for order_id in cancel]
        with ThreadPoolExecutor(count + len(cancels)) as pool:
            futures = [pool.submit(self.place, p.key, p.body, **meta) for p in plans]
            futures += [pool.submit(self.cancel, order_id, key, **meta) for order_id, key in cancels]
            wait(futures, timeout=after)
            if then is not None:
                then()
        return plans

    def retry_unknown(self, history: History, **meta) -> list[Reply]:
        """Send again every request whose outcome the client never learned (`info`) and that no
        later request with its key answered, with its key, as a client would: a place or cancel
        that took effect must be acknowledged now, and then show downstream like any other."""
        answered = {op.invoke.get("key") for op in history.ops(("place", "cancel")) if op.type != "info"}
        unknown = {op.invoke["key"]: op for op in history.ops(("place", "cancel"))
                   if op.type == "info" and op.invoke.get("key") and op.invoke["key"] not in answered}
        places = [(k, op.invoke.get("body")) for k, op in unknown.items()
                  if op.f == "place" and isinstance(op.invoke.get("body"), dict)]
        replies = self.retry_keys(places, **meta)
        for key, op in unknown.items():
            if op.f == "cancel" and (order_id := cancelled_order(op.invoke.get("path"))):
                replies.append(self.cancel(order_id, key, retry=True, **meta))
        return replies

    def retry_keys(self, requests: list[tuple[str, dict]], **meta) -> list[Reply]:
        """Send requests again with their keys (a client that never heard back, or did and retries)."""
        return [self.place(key, body, retry=True, **meta) for key, body in requests]


def cancelled_order(path: object) -> str:
    """The order id of a cancel's path /orders/<id>/cancel ('' if it is not one)."""
    parts = str(path or "").split("/")
    return parts[2] if len(parts) == 4 and parts[3] == "cancel" else ""


def cancellable(history: History, count: int, rng: random.Random) -> list[str]:
    """Up to `count` order ids answered 201 that no cancel was sent for yet, chosen with `rng`."""
    cancelled = {cancelled_order(op.invoke.get("path")) for op in history.ops("cancel")}
    ids = sorted({str(op.result["body"]["order_id"]) for op in history.ops("place")
                  if op.type == "ok" and isinstance(op.result.get("body"), dict) and op.result["body"].get("order_id")
                  and not op.invoke.get("probe")} - cancelled)
    return rng.sample(ids, min(count, len(ids)))


def acknowledged_cancels(history: History, count: int, rng: random.Random) -> list[tuple[str, str]]:
    """Up to `count` (order id, key) of cancels answered 200, chosen with `rng`."""
    seen = sorted({(cancelled_order(op.invoke.get("path")), op.invoke["key"]) for op in history.ops("cancel")
                   if op.type == "ok" and op.invoke.get("key") and not op.invoke.get("probe")})
    return rng.sample(seen, min(count, len(seen)))


def acknowledged_requests(history: History, count: int, rng: random.Random) -> list[tuple[str, dict]]:
    """Up to `count` (key, body) of place requests that were answered 201, chosen with `rng`."""
    seen: dict[str, dict] = {}
    for op in history.ops("place"):
        if op.type == "ok" and op.invoke.get("key") and op.invoke.get("key") not in seen:
            seen[op.invoke["key"]] = op.invoke.get("body")
    keys = sorted(seen)
    return [(k, seen[k]) for k in rng.sample(keys, min(count, len(keys)))]


def orders_of(run: "Run", service: str) -> Orders:
    """The run's order workload against `service` (one client, seeded from the run), made once."""
    if "orders" not in run.state:
        run.state["orders"] = Orders(run.client(service), run.seed)
    return run.state["orders"]


def steady(workload: Orders, stop: threading.Event, rate: float) -> None:
    """Live mode (`make lab-N`): orders at about `rate` per second until `stop`, with the odd
    client retry and cancel."""
    while not stop.wait(1 / rate):
        workload.play(workload.plan())


def order_metrics(history: History, elapsed: float) -> dict[str, str]:
    """What the live view shows about the client side: sent, acknowledged, errors."""
    ops = history.ops("place")
    acked = sum(1 for op in ops if op.type == "ok")
    errors = sorted({str(op.result.get("status") or "no answer") for op in ops if op.type != "ok"})
    return {"orders sent": str(len(ops)), "acknowledged (2xx)": f"{acked}  ({acked / max(elapsed, 1e-9):.1f}/s)",
            "errors": ", ".join(errors) or "none"}
