"""The payment workload (lab 4): seeded payments sent to POST /payments with an Idempotency-Key,
each recorded as an operation (f="pay"); some are planned at the grader's gateway to fail a few
times (transient), to be refused (poison) or to take long (slow). The plan is recorded too
(observe what="payment-plan"), so checkers know what each payment was meant to meet.
"""
from __future__ import annotations

import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from ..history import History
from .gateway import Gateway, Plan
from .http import HttpWorkload, Reply

if TYPE_CHECKING:
    from ..runner import Run
    from ..scenario import PhaseContext

PLAN = "payment-plan"


class Payments:
    def __init__(self, client: HttpWorkload, gateway: Gateway | None, seed: int) -> None:
        self.client, self.gateway = client, gateway
        self.rng = random.Random(seed ^ 0x9A7)
        self._lock = threading.Lock()

    def key(self) -> str:
        with self._lock:
            return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def body(self, tag: str = "p") -> dict:
        with self._lock:
            return {"payment_id": f"{tag}-{self.rng.getrandbits(48):012x}", "account": f"acc-{self.rng.randrange(20)}",
                    "amount_cents": self.rng.randrange(100, 50_000)}

    def planned(self, tag: str, plan: Plan | None = None) -> dict:
        """A new payment body; its gateway behaviour (if any) is planned and recorded first."""
        body = self.body(tag)
        if plan is not None and self.gateway is not None:
            self.gateway.plan(body["payment_id"], plan)
            self.client.history.observe(PLAN, payment_id=body["payment_id"], fail_first=plan.fail_first,
                                        poison=plan.poison, slow=plan.slow)
        return body

    def pay(self, key: str | None, body: dict, **meta) -> Reply:
        return self.client.send("pay", "POST", "/payments", key=key, body=body, payment_id=body.get("payment_id"),
                                **meta)

    def send(self, tag: str = "p", plan: Plan | None = None, **meta) -> Reply:
        return self.pay(self.key(), self.planned(tag, plan), **meta)

    def load(self, ctx: "PhaseContext", count: int, rate: float, concurrency: int,
             special: list[tuple[str, Plan]] = ()) -> int:
        """At least `count` payments at about `rate`/s (more while the phase's faults are under way),
        with the `special` ones spread over the first half; a retry of the same request now and then."""
        special = list(special)
        spots = sorted(self.rng.sample(range(max(count // 2, len(special))), len(special)))
        todo = dict(zip(spots, special))
        sent, started, pace = 0, time.monotonic(), threading.Event()

        def one(i: int) -> None:
            tag, plan = todo.get(i, ("p", None))
            key, body = self.key(), self.planned(tag, plan)
            reply = self.pay(key, body)
            if self.rng.random() < 0.1 or not reply.ok and reply.status == 0:
                self.pay(key, body, retry=True)

        with ThreadPoolExecutor(concurrency) as pool:
            while (sent < count or not ctx.nemesis_done()) and not ctx.out_of_time():
                wave = list(range(sent, sent + concurrency))
                list(pool.map(one, wave))
                sent += len(wave)
                pace.wait(max(0.0, started + sent / rate - time.monotonic()))
        return sent

    def retry_unknown(self, history: History, rounds: int = 3) -> None:
        """Every request never answered 2xx or 4xx is sent again with its key (a client that never
        learned the outcome), a few rounds while the broker may still be coming back."""
        for _ in range(rounds):
            answered = {op.invoke.get("key") for op in history.ops("pay") if op.type != "info"}
            unknown = {op.invoke["key"]: op.invoke["body"] for op in history.ops("pay")
                       if op.type == "info" and op.invoke.get("key") and isinstance(op.invoke.get("body"), dict)}
            todo = [(k, b) for k, b in unknown.items() if k not in answered]
            if not todo:
                return
            for key, body in todo:
                self.pay(key, body, retry=True)


def payments_of(run: "Run", service: str, gateway: Gateway | None) -> Payments:
    if "payments" not in run.state:
        run.state["payments"] = Payments(run.client(service), gateway, run.seed)
    return run.state["payments"]


def accepted(history: History) -> dict[str, object]:
    """payment_id -> the first pay operation answered 2xx for it."""
    out = {}
    for op in history.ops("pay"):
        if op.type == "ok" and isinstance(op.invoke.get("body"), dict):
            out.setdefault(str(op.invoke["body"].get("payment_id")), op)
    return out


def plans(history: History) -> dict[str, dict]:
    return {e.data["payment_id"]: e.data for e in history.observations(PLAN)}
