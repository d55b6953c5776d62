"""Checkers for lab 4 (payments through RabbitMQ), pure functions of the history.

What they read (all the grader's own records, never a service's word):
- operations f="pay": what the client was told (grader/workloads/payments.py), and the plan of
  each payment at the gateway (observe what="payment-plan": fail_first, poison, slow);
- observe what="gateway-call": every call the worker made to the grader's gateway, timed by the
  grader (grader/workloads/gateway.py);
- observe what="charges": the rows of the `charges` table as the grader read them;
- observe what="amqp-channels" / "amqp-consumers" / "amqp-dlq" / "amqp-broker-log":
  the broker's view (grader/observe/amqp.py).
"""
from __future__ import annotations

from collections import Counter, defaultdict
from typing import Callable, Sequence

from ..history import History, Op
from ..nemesis import fault_events
from ..observe.amqp import BROKER_LOG, CHANNELS, CONNECTIONS, CONSUMERS, DLQ, QUEUES, erlang_pid
from ..traces import ExpectedError, RecordHeader, Redelivery, Sel, Step
from ..workloads.gateway import CALL
from ..workloads.payments import accepted, plans
from .generic import check_lost, unsettled
from .orders import fault_after
from .result import CheckResult
from .tracing import ChainEvidence, ChainTitles, chain_trace_check

CHARGES = "charges"  # observe: rows [payment_id, amount_cents]
SERVICE_FAULTS = ("kill", "crash-point", "hold-then-kill", "pause", "restart-server", "cut", "reset")


def charges(history: History) -> tuple[Counter, dict] | None:
    seen = history.last_observation(CHARGES)
    if seen is None or seen.get("error"):
        return None
    rows = seen.get("rows", [])
    return Counter(str(p) for p, _ in rows), {str(p): a for p, a in rows}


def unreadable(history: History, **args) -> CheckResult | None:
    seen = history.last_observation(CHARGES)
    if seen is None:
        return CheckResult.error(message="the charges table was never read (the run did not get there)", **args)
    if seen.get("error"):
        return CheckResult.error(message=f"could not read the charges table: {seen['error']}", **args)
    return None


def gateway_calls(history: History) -> dict[str, list[dict]]:
    calls: dict[str, list[dict]] = defaultdict(list)
    for e in history.observations(CALL):
        calls[e.data["payment_id"]].append(e.data)
    for found in calls.values():
        found.sort(key=lambda c: c["t_start"])
    return calls


def _op(op: Op) -> str:
    retry = ", a retry" if op.invoke.get("retry") else ""
    return f"request #{op.id}{retry}, key {op.invoke.get('key')}, {op.result.get('status')} at t={op.t_complete:.1f}s"


def _calls(found: list[dict]) -> str:
    return ", ".join(f"{c['status']} at t={c['t_start']:.1f}s" for c in found) or "none"


def overlapping_faults(history: History, t0: float, t1: float, kinds: Sequence[str] = SERVICE_FAULTS) -> list[dict]:
    return [f for f in fault_events(history) if f["effective"] and f["fault"] in kinds and f["start"] is not None
            and f["start"] <= t1 + 1.0 and (f["end"] or t1) >= t0 - 1.0]


def gateway_charges(found: list[dict]) -> list[str]:
    """The distinct charges the gateway approved for one payment (its calls, in order): a call
    that replayed an earlier approval (the same idempotency key) is no new charge."""
    out: list[str] = []
    for c in found:
        if c.get("status") != 200:
            continue
        charge = c.get("charge_id")
        if charge is None:  # recorded before charge ids were: one charge per distinct key
            charge = f"key {c.get('key')}"
        if not c.get("replayed") and charge not in out:
            out.append(charge)
    return out


def redelivered_after_charge(history: History, calls: dict[str, list[dict]]) -> list[str]:
    """What shows that a payment the worker had charged reached it again (the event a double charge
    needs): the gateway called again for a payment after approving it, or the worker SIGKILLed just
    before an ack it was about to send (the delivery it had finished comes back)."""
    seen = []
    for p, found in sorted(calls.items()):
        approved = [c["t_end"] for c in found if c.get("status") == 200]
        if approved and any(c["t_start"] > min(approved) for c in found):
            seen.append(f"payment {p} reached the gateway again after its approval ({_calls(found)})")
    for f in fault_events(history):
        d = f.get("detail") or {}
        if f["effective"] and d.get("reached") and d.get("point") == "amqp-ack" and d.get("when") == "before":
            seen.append(f"{f['target']} SIGKILLed just before an ack (t={f['start']:.1f}s): the delivery it had "
                        f"finished was redelivered")
    return seen


def check_no_double_charge(history: History, **args) -> CheckResult:
    """At most one charge per payment id - at the gateway (distinct approved charges, the card's
    view) and in `charges` (rows) - for the amount requested; judged only if a payment the worker
    had charged reached it again (otherwise nothing could have charged twice: SKIP)."""
    if (bad := unreadable(history, **args)) is not None:
        return bad
    rows, amounts = charges(history)
    calls = gateway_calls(history)
    requested = {}
    for op in history.ops("pay"):
        body = op.invoke.get("body")
        if isinstance(body, dict):
            requested.setdefault(str(body.get("payment_id")), body.get("amount_cents"))
    evidence = []
    for payment_id, found in sorted(calls.items()):
        approved = gateway_charges(found)
        if len(approved) > 1:
            keys = sorted({str(c.get("key")) for c in found if c.get("status") == 200})
            evidence.append(f"payment {payment_id} charged {len(approved)} times by the gateway ({', '.join(approved[:3])}; "
                            f"Idempotency-Key {', '.join(keys[:3])}; calls: {_calls(found)}): each attempt must send "
                            f"the same key (the payment id){fault_after(history, found[0]['t_start'])}")
    for payment_id, n in sorted(rows.items()):
        if n > 1:
            first = calls.get(payment_id, [{}])[0].get("t_start")
            evidence.append(f"payment {payment_id} charged {n} times (gateway calls: {_calls(calls.get(payment_id, []))})"
                            f"{fault_after(history, first)}")
    evidence += [f"payment {p}: charged {a} cents, requested {requested[p]}" for p, a in sorted(amounts.items())
                 if p in requested and a != requested[p]]
    evidence += [f"payment {p} charged but never requested" for p in sorted(rows) if p not in requested]
    redelivered = sum(max(0, len(found) - 1) for p, found in calls.items() if rows.get(p) == 1)
    if evidence:
        bit = Counter(f"{f['fault']} of {f['target']}" for f in fault_events(history) if f["effective"])
        evidence.append("faults that redeliver in this run: " + (", ".join(f"{k} x{n}" for k, n in sorted(bit.items()))
                                                                 or "none"))
        doubled = {p for p, n in rows.items() if n > 1} | {p for p, found in calls.items()
                                                          if len(gateway_charges(found)) > 1}
        return CheckResult.verdict(passed=False, message=f"{len(doubled)} payment(s) charged more than once",
                                   evidence=evidence, **args)
    again = redelivered_after_charge(history, calls)
    if not again:
        return CheckResult.skip(args["id"], args["title"], args["max_points"],
                                "not judged: no payment the worker had charged ever reached it again (no gateway call "
                                "after an approval, no crash just before an ack), so nothing could charge twice - a "
                                "worker that acks automatically never sees a redelivery")
    return CheckResult.verdict(passed=True, message=f"{len(rows)} payments charged, each once (at the gateway and in "
                               f"charges); {len(again)} redelivery(ies) of a charged payment, e.g. {again[0]}; "
                               f"{redelivered} repeated gateway call(s) became no second charge", **args)


def check_no_lost_payment(history: History, **args) -> CheckResult:
    """Every payment answered 2xx (the broker confirmed it) is charged - unless it is poison, which
    belongs in the dead-letter queue (judged by poison-to-dlq)."""
    if (bad := unreadable(history, **args)) is not None:
        return bad
    rows, _ = charges(history)
    poison = {p for p, plan in plans(history).items() if plan.get("poison")}
    acked = {p: op for p, op in accepted(history).items() if p not in poison}
    result = check_lost(acknowledged={p: f"{_op(op)}{fault_after(history, op.t_complete)}" for p, op in acked.items()},
                        applied=set(rows), **args)
    # where missing ones may be: still queued, or the run never settled
    left = {q: n for q, n in ((history.last_observation(QUEUES) or {}).get("queues") or {}).items() if n}
    waiting = unsettled(history)
    if result.passed:
        result.message = f"all {len(acked)} accepted payments charged"
    else:
        result.evidence += ([f"messages still ready at the end: {', '.join(f'{q} {n}' for q, n in sorted(left.items()))} "
                             f"(not consumed: the worker stopped consuming, or never came back)"] if left else [])
        result.evidence += waiting
    return result


def _x_death(message: dict) -> list[dict]:
    deaths = (message.get("headers") or {}).get("x-death") or []
    return [d for d in deaths if isinstance(d, dict)]


def check_poison_to_dlq(max_attempts: int, work_queue: Callable[[History], str]):
    """A checker: each accepted poison payment (the gateway refuses it every time) is in the
    dead-letter queue, rejected from the work queue (x-death reason "rejected"), after at most
    `max_attempts` gateway calls, never charged; and other payments were charged meanwhile."""
    def check(history: History, **args) -> CheckResult:
        if (bad := unreadable(history, **args)) is not None:
            return bad
        dlq = history.last_observation(DLQ)
        if dlq is None or dlq.get("error"):
            return CheckResult.error(message=f"the dead-letter queue was not read: {(dlq or {}).get('error')}", **args)
        poison = {p for p, plan in plans(history).items() if plan.get("poison")}
        judged = {p: op for p, op in accepted(history).items() if p in poison}
        if not judged:
            return CheckResult.error(message="no poison payment was accepted (the run did not get there)", **args)
        rows, _ = charges(history)
        calls = gateway_calls(history)
        in_dlq: dict[str, list[dict]] = defaultdict(list)
        for m in dlq.get("messages", []):
            in_dlq[str(m.get("payment_id"))].append(m)
        queue = work_queue(history)
        evidence = []
        for p in sorted(judged):
            made = calls.get(p, [])
            where = f"gateway calls: {len(made)} ({_calls(made)[:200]})"
            if rows.get(p):
                evidence.append(f"poison payment {p} was charged ({where})")
            refused = [c for c in made if c.get("status") == 422]
            again = [c for c in made if refused and c["t_start"] > refused[0]["t_end"]]
            if len(made) > max_attempts:
                evidence.append(f"poison payment {p}: {len(made)} attempts, at most {max_attempts} allowed ({where})")
            elif again and not overlapping_faults(history, refused[0]["t_start"], again[-1]["t_end"]):
                evidence.append(f"poison payment {p}: the gateway refused it (422, a permanent error) and it was called "
                                f"again {len(again)} time(s) with no fault in between ({where}): a permanent error is "
                                f"not retried, it is dead-lettered at once")
            if not in_dlq.get(p):
                evidence.append(f"poison payment {p} is not in the dead-letter queue {dlq.get('queue')} ({where})")
                continue
            deaths = [d for m in in_dlq[p] for d in _x_death(m)]
            shown = [(d.get("reason"), d.get("queue"), d.get("count")) for d in deaths]
            if not any(d.get("reason") == "rejected" and d.get("queue") == queue for d in deaths):
                evidence.append(f"poison payment {p} dead-lettered with x-death {shown or 'missing'}, expected reason "
                                f"'rejected' from {queue} (basic_reject with requeue=False)")
            elif any(d.get("queue") != queue or int(d.get("count") or 1) > 1 for d in deaths):
                evidence.append(f"poison payment {p} died more than once before the dead-letter queue (x-death "
                                f"{shown}): it went through a retry queue; a permanent error (422) is rejected on "
                                f"its first delivery")
        first = min((c["t_start"] for p in judged for c in calls.get(p, [])), default=None)
        others = sum(1 for p, found in calls.items() if p not in poison
                     for c in found if c["status"] == 200 and first is not None and c["t_start"] > first)
        if first is not None and not others:
            evidence.append("no other payment was charged after the first poison payment arrived: the queue stalled")
        if evidence:
            return CheckResult.verdict(passed=False, message=f"{len(evidence)} problem(s) with {len(judged)} poison "
                                       f"payments", evidence=evidence, **args)
        return CheckResult.verdict(passed=True, message=f"{len(judged)} poison payments rejected into the dead-letter "
                                   f"queue after at most {max_attempts} attempts; {others} other charges meanwhile",
                                   **args)
    return check


def check_retry_backoff(delays: Sequence[float], tolerance: float = 0.9):
    """A checker: each accepted payment planned to fail k times at the gateway (503) is attempted
    again after gaps of at least the configured delays, and charged once. Payments whose attempts
    overlapped a crash or a broker fault are not judged (a redelivery is no retry)."""
    def check(history: History, **args) -> CheckResult:
        if (bad := unreadable(history, **args)) is not None:
            return bad
        rows, _ = charges(history)
        calls = gateway_calls(history)
        transient = {p: plan for p, plan in plans(history).items() if plan.get("fail_first") and not plan.get("poison")}
        acked = accepted(history)
        evidence, judged, skipped = [], 0, 0
        for p, plan in sorted(transient.items()):
            if p not in acked:
                continue
            made = calls.get(p, [])
            k = int(plan["fail_first"])
            if made and overlapping_faults(history, made[0]["t_start"], made[-1]["t_end"] + 5):
                skipped += 1
                continue
            judged += 1
            if len(made) < k + 1:
                evidence.append(f"payment {p}: failed {k} times by plan, but only {len(made)} gateway call(s) "
                                f"({_calls(made)}); not retried until it succeeded")
                continue
            for i in range(k):
                gap = made[i + 1]["t_start"] - made[i]["t_end"]
                want = delays[min(i, len(delays) - 1)]
                if gap < tolerance * want:
                    evidence.append(f"payment {p}: attempt {i + 2} came {gap:.2f} s after attempt {i + 1} failed "
                                    f"(503); the delay before it is {want:g} s ({_calls(made)})")
                    break
            if rows.get(p, 0) != 1:
                evidence.append(f"payment {p}: charged {rows.get(p, 0)} times after {len(made)} attempts")
        if not judged:
            return CheckResult.error(message=f"no retried payment could be judged ({skipped} overlapped faults)", **args)
        if evidence:
            return CheckResult.verdict(passed=False, message=f"{len(evidence)} of {judged} retried payments did not back "
                                       f"off as configured", evidence=evidence, **args)
        return CheckResult.verdict(passed=True, message=f"{judged} payments retried after gaps >= "
                                   f"{', '.join(f'{d:g}' for d in delays)} s and charged once", **args)
    return check


def check_prefetch(limit: int, work_queue: Callable[[History], str]):
    """A checker: every sampled channel consuming the work queue has a prefetch bound (1..limit)
    and never more unacked deliveries than it; its consumers use manual acks."""
    def check(history: History, **args) -> CheckResult:
        queue = work_queue(history)
        consumers = [c for e in history.observations(CONSUMERS) for c in e.data.get("consumers", [])
                     if c.get("queue") == queue]
        if not consumers:
            return CheckResult.error(message=f"no consumer of {queue} was ever seen by the broker", **args)
        consuming = {c["channel"] for c in consumers}
        samples = [(e.t, ch) for e in history.observations(CHANNELS) for ch in e.data.get("channels", [])
                   if ch.get("consumers")]
        evidence = []
        unbounded = {c["channel"] for c in consumers if c.get("ack_required") and c.get("prefetch") == 0}
        if unbounded:
            evidence.append(f"{len(unbounded)} consumer(s) of {queue} with no prefetch bound of their own (the broker "
                            f"lists prefetch 0 for the consumer, whatever the channel says now): basic_qos must come "
                            f"before basic_consume - it applies to consumers created after it")
        auto = {c["channel"] for c in consumers if not c.get("ack_required")}
        if auto:
            evidence.append(f"{len(auto)} consumer(s) of {queue} with automatic acks (no_ack): a message counts as "
                            f"delivered when it is sent, and a crash loses every one in flight - and the prefetch "
                            f"bound does not apply")
        for t, ch in samples:
            if ch["pid"] not in consuming and ch["consumers"] == 0:
                continue
            if ch["prefetch"] == 0:
                evidence.append(f"t={t:.1f}s channel {ch['pid']}: no prefetch bound (prefetch_count 0), "
                                f"{ch['unacked']} unacked")
            elif ch["prefetch"] > limit:
                evidence.append(f"t={t:.1f}s channel {ch['pid']}: prefetch_count {ch['prefetch']} > {limit}")
            elif ch["unacked"] > ch["prefetch"]:
                evidence.append(f"t={t:.1f}s channel {ch['pid']}: {ch['unacked']} unacked > prefetch {ch['prefetch']}")
        peak = max((ch["unacked"] for _, ch in samples), default=0)
        if evidence:
            return CheckResult.verdict(passed=False, message=f"{len(evidence)} sample(s) without a working prefetch bound",
                                       evidence=evidence, **args)
        return CheckResult.verdict(passed=True, message=f"{len(samples)} channel samples: prefetch in 1..{limit}, at most "
                                   f"{peak} unacked; {len(consumers)} consumer sightings, manual acks", **args)
    return check


def check_heartbeats(heartbeat: float):
    """A checker: each accepted payment whose gateway call takes longer than two heartbeat
    intervals (a long job) is attempted once, and the broker's log shows no connection closed for
    missed heartbeats while it ran: the connection survived and its ack was taken. (A worker that
    recorded the charge before losing the connection acks the redelivery without a second call:
    the broker's log is then the evidence.)"""
    def check(history: History, **args) -> CheckResult:
        if (bad := unreadable(history, **args)) is not None:
            return bad
        rows, _ = charges(history)
        calls = gateway_calls(history)
        slow = {p: plan for p, plan in plans(history).items() if plan.get("slow")}
        acked = accepted(history)
        seen_log = history.last_observation(BROKER_LOG) or {}
        log_lines = seen_log.get("lines", [])
        # Only a consumer's connection is the worker's: a publisher's idle connection that misses
        # its heartbeats (another bug) or another run's on a shared node is not this job's.
        consuming = {erlang_pid(ch.get("connection", "")) for e in history.observations(CHANNELS)
                     for ch in e.data.get("channels", []) if ch.get("consumers")}
        closed_at = [(t, line) for t, line in zip(seen_log.get("at", []), log_lines)
                     if t is not None and erlang_pid(line) in consuming]
        evidence, judged, skipped = [], 0, 0
        # the negotiated heartbeat of each consumer's connection (read from the broker): 0 means the
        # broker never notices a dead or blocked worker, whatever load the run had
        seen_hb = {erlang_pid(c["pid"]): c["heartbeat"] for e in history.observations(CONNECTIONS)
                   for c in e.data.get("connections", [])}
        disabled = sorted({pid for pid in consuming if seen_hb.get(pid) == 0})
        if disabled:
            judged += 1
            evidence.append(f"{len(disabled)} consuming connection(s) negotiated heartbeat 0 (rabbitmqctl list_connections "
                            f"timeout; the grader asked for {heartbeat:g} s in AMQP_URL): heartbeats are disabled, "
                            f"so a blocked or half-dead worker keeps its deliveries for ever")
        for p, plan in sorted(slow.items()):
            made = calls.get(p, [])
            if p not in acked or not made:
                continue
            if overlapping_faults(history, made[0]["t_start"], made[0]["t_end"] + 3):
                skipped += 1
                continue
            judged += 1
            took = made[0]["t_end"] - made[0]["t_start"]
            lost = [line for t, line in closed_at if made[0]["t_start"] <= t <= made[0]["t_end"] + 3]
            if len(made) > 1:
                evidence.append(f"payment {p}: its job took {took:.1f} s (> 2 heartbeats of {heartbeat:g} s) and it was "
                                f"delivered again: gateway calls {_calls(made)} - the connection was lost while the "
                                f"job ran")
            elif lost:
                evidence.append(f"payment {p}: while its job ran ({took:.1f} s from t={made[0]['t_start']:.1f}s) the broker "
                                f"closed a connection for missed heartbeats (heartbeat {heartbeat:g} s): {lost[0]}")
            elif rows.get(p, 0) != 1:
                evidence.append(f"payment {p}: the long job ran once but the payment is charged {rows.get(p, 0)} times")
        if not judged:
            return CheckResult.error(message=f"no long job could be judged ({skipped} overlapped faults)", **args)
        if evidence:
            return CheckResult.verdict(passed=False, message=f"{len(evidence)} long job(s) cost their connection",
                                       evidence=evidence, **args)
        return CheckResult.verdict(passed=True, message=f"{judged} jobs longer than 2 heartbeat intervals "
                                   f"({2 * heartbeat:g} s) acked on their first delivery", **args)
    return check


# --- traces ------------------------------------------------------------------------------------

def queue_trace_check(api: str, worker: str, secret_of: Callable[[History], list[str]]):
    """The `traces` check for a publisher -> queue -> worker chain: `api`'s SERVER span -> its
    PRODUCER span (publish) -> `worker`'s CONSUMER span (process; by parent or link), per traced
    payment; every attempt of a retried payment is another CONSUMER span in the same trace; a
    dead-lettered payment has a CONSUMER span with status ERROR; dead-lettered messages still carry
    their PRODUCER span's traceparent; conventions; no secret; spans flushed on SIGTERM."""
    chain = [Step(service=api, kind="SERVER"), Step(service=api, kind="PRODUCER"),
             Step(service=worker, kind="CONSUMER", via_link=True)]

    def evidence(history: History) -> ChainEvidence:
        plan = plans(history)
        traced = {str(op.invoke.get("payment_id")): op.invoke["trace_id"] for op in history.ops("pay")
                  if op.invoke.get("probe") == "trace" and op.type == "ok"}
        dlq = history.last_observation(DLQ) or {}
        return ChainEvidence(
            headers=[RecordHeader(f"dead-lettered message of payment {m.get('payment_id')}",
                                  (m.get("headers") or {}).get("traceparent"), traced[str(m.get("payment_id"))])
                     for m in dlq.get("messages", []) if str(m.get("payment_id")) in traced],
            redelivered=[Redelivery(f"payment {p} (failed {plan[p]['fail_first']} times, then charged)", t,
                                    deliveries=int(plan[p]["fail_first"]) + 1)
                         for p, t in traced.items() if plan.get(p, {}).get("fail_first") and not plan[p].get("poison")],
            errors=[ExpectedError(f"poison payment {p} (dead-lettered)", t, Sel(service=worker, kind="CONSUMER"))
                    for p, t in traced.items() if plan.get(p, {}).get("poison")])

    return chain_trace_check(chain, evidence, secret_of, ChainTitles(
        none="no traced payment was accepted (the run did not get there)",
        connected="one connected trace per payment", headers="messages carry their PRODUCER span's context",
        redelivered="every attempt of a retried payment is a CONSUMER span in its trace",
        errors="the dead-lettered attempt has an ERROR span"))
