"""Checkers for order workloads (labs 1 and 2), pure functions of the history.

What the client was told comes from the operations (grader/workloads/orders.py); what the system
holds comes from the grader's own observation of the downstream tables, recorded as
`observe what="downstream"` with rows of orders (order_id, customer_id, amount_cents, status) and
totals (customer_id, order_count, total_cents). Unknown outcomes are first-class: a request that
ended `info` may have taken effect once or not at all; one that ended `fail` must never appear.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

from ..history import History, Op
from ..nemesis import fault_events
from .generic import check_duplicates, check_final_state, check_lost
from .result import CheckResult

DOWNSTREAM = "downstream"


def _body_key(body: object) -> tuple | None:
    if isinstance(body, dict) and "customer_id" in body and "amount_cents" in body:
        return (str(body["customer_id"]), body["amount_cents"])
    return None


def placed(history: History, before: float | None = None) -> dict[str, Op]:
    """order_id -> the first place operation answered 201 with it (acknowledged before `before`)."""
    orders: dict[str, Op] = {}
    for op in history.ops("place"):
        if before is not None and (op.t_complete is None or op.t_complete > before):
            continue
        body = op.result.get("body")
        if op.type == "ok" and isinstance(body, dict) and body.get("order_id"):
            orders.setdefault(str(body["order_id"]), op)
    return orders


def observed_at(history: History) -> float | None:
    """When the grader read the downstream tables (what was acknowledged later cannot be in them)."""
    found = history.observations(DOWNSTREAM)
    return found[-1].t if found else None


def downstream(history: History) -> tuple[dict[str, tuple], dict[str, tuple]] | None:
    """(orders: id -> (customer, amount, status), totals: customer -> (count, cents)) as last observed."""
    seen = history.last_observation(DOWNSTREAM)
    if seen is None or seen.get("error"):
        return None
    orders = {str(o): (c, a, s) for o, c, a, s in seen.get("orders", [])}
    totals = {str(c): (n, t) for c, n, t in seen.get("totals", [])}
    return orders, totals


def unreadable(history: History, **args) -> CheckResult | None:
    seen = history.last_observation(DOWNSTREAM)
    if seen is None:
        return CheckResult.error(message="the downstream tables were never observed (the run did not get there)", **args)
    if seen.get("error"):
        return CheckResult.error(message=f"could not read the downstream tables: {seen['error']}", **args)
    return None


def _detail(op: Op) -> str:
    retry = ", a retry" if op.invoke.get("retry") else ""
    return f"request #{op.id}{retry}, key {op.invoke.get('key')}, {op.result.get('status')} at t={op.t_complete:.1f}s"


def fault_after(history: History, t: float | None) -> str:
    """A fault under way at time t, else the first that bit after it: the likely exposer."""
    if t is None:
        return ""
    bit = sorted((f for f in fault_events(history) if f["effective"] and f["end"] is not None and f["end"] >= t),
                 key=lambda f: f["start"] or 0)
    after = sorted((f for f in bit if (f["start"] or 0) <= t), key=lambda f: -(f["start"] or 0)) or bit
    if not after:  # (of the faults under way, the one that began last: a cut beats a hold begun long before)
        return "; no fault after it"
    f = after[0]
    how = (f.get("detail") or {}).get("how")
    when = "first fault after it" if (f["start"] or 0) >= t else "under way then"
    return (f"; {when}: {f.get('description') or f['fault'] + ' ' + str(f['target'])}"
            f"{f' ({how})' if how else ''} at t={f['start']:.1f}s")


def _cancelled_id(op: Op) -> str:
    parts = str(op.invoke.get("path", "")).split("/")
    return parts[2] if len(parts) >= 4 else ""


def acknowledged(history: History) -> list[tuple[str, Op, str, bool]]:
    """Every acknowledged operation the downstream snapshot can show: (label, op, what, applied) for
    each order answered 201 (applied: it is there) and each cancel answered 200 (applied: the order
    is cancelled there), acknowledged before the snapshot was read."""
    orders, _ = downstream(history)
    seen_at = observed_at(history)
    out = [(o, op, f"{op.invoke['body'].get('customer_id')}, {op.invoke['body'].get('amount_cents')} cents",
            o in orders) for o, op in placed(history, before=seen_at).items()]
    for op in history.ops("cancel"):
        order_id = _cancelled_id(op)
        if op.type == "ok" and order_id and op.t_complete is not None and op.t_complete <= (seen_at or 0):
            out.append((f"cancel of {order_id}", op, f"answered {op.result.get('status')}",
                        orders.get(order_id, (None, None, None))[2] == "cancelled"))
    return out


def unsettled(history: History) -> str:
    """Why a loss may be a consumer still behind (the `quiesce` observation before the final read):
    '' if everything had settled."""
    seen = history.last_observation("quiesce")
    if seen is None or seen.get("settled"):
        return ""
    return (f" (read after waiting {seen.get('timeout', 0):g} s for the system to settle, still pending: "
            f"{', '.join(map(str, seen.get('pending') or [])) or '?'}: behind or stuck)")


def check_no_lost_orders(history: History, **args) -> CheckResult:
    """Every acknowledged operation took effect downstream: each order answered 201 is there, and
    each order whose cancel was answered 200 is cancelled there."""
    if (bad := unreadable(history, **args)) is not None:
        return bad
    acked, settling = acknowledged(history), unsettled(history)
    result = check_lost(acknowledged={label: f"{what} ({_detail(op)}{fault_after(history, op.t_complete)})"
                                      for label, op, what, _ in acked},
                        applied={label for label, _, _, applied in acked if applied}, **args)
    if not result.passed:
        result.message += settling
    return result


def check_no_duplicate_effects(history: History, **args) -> CheckResult:
    """Three views of "applied once": each idempotency key got one order id; no body appears
    downstream more often than keys were sent with it that did not fail; each customer's totals
    equal what its distinct orders add up to."""
    if (bad := unreadable(history, **args)) is not None:
        return bad
    orders, totals = downstream(history)

    ids_per_key: dict[str, set[str]] = defaultdict(set)
    keys_per_body: dict[tuple, set[str]] = defaultdict(set)
    for op in history.ops("place"):
        key, body = op.invoke.get("key"), op.invoke.get("body")
        if not key:
            continue
        result = op.result.get("body")
        if op.type == "ok" and isinstance(result, dict) and result.get("order_id"):
            ids_per_key[key].add(str(result["order_id"]))
        if op.type in ("ok", "info") and (bk := _body_key(body)):
            keys_per_body[bk].add(key)
    first_t: dict[str, float] = {}
    for op in history.ops("place"):
        if op.invoke.get("key"):
            first_t.setdefault(op.invoke["key"], op.t_invoke)
    evidence = [f"idempotency key {k} -> {len(v)} different order ids: {', '.join(sorted(v))}"
                f"{fault_after(history, first_t.get(k))}" for k, v in sorted(ids_per_key.items()) if len(v) > 1]

    # A cancelled row of 0 cents is the projection's tombstone (a cancel came for an order it never
    # saw: a lost OrderPlaced, judged by the lost checks), not an order placed twice.
    rows_per_body = Counter((str(c), a) for c, a, s in orders.values() if not (s == "cancelled" and a == 0))
    for (customer, amount), n in sorted(rows_per_body.items()):
        allowed = len(keys_per_body.get((customer, amount), ()))
        if n > allowed:
            keys = sorted(keys_per_body.get((customer, amount), ()))
            evidence.append(f"{n} orders of {customer} for {amount} cents downstream, but only {allowed} "
                            f"request key(s) with that body could have placed one ({', '.join(keys)})"
                            f"{fault_after(history, min((first_t[k] for k in keys if k in first_t), default=None))}")

    expected: dict[str, int] = {}
    for customer, amount, status in orders.values():
        if status == "placed":
            expected[f"{customer} total_cents"] = expected.get(f"{customer} total_cents", 0) + amount
            expected[f"{customer} order_count"] = expected.get(f"{customer} order_count", 0) + 1
    observed: dict[str, int] = {name: 0 for name in expected}
    for customer, (count, cents) in totals.items():
        if count or cents or f"{customer} order_count" in expected:
            observed[f"{customer} total_cents"], observed[f"{customer} order_count"] = cents, count
    effects = check_duplicates(expected=expected, observed=observed, **args)
    evidence = effects.evidence + evidence
    if evidence:
        bit = Counter(f"{f['fault']} of {f['target']}" for f in fault_events(history) if f["effective"])
        evidence.append("faults that redeliver or retry in this run: " +
                        (", ".join(f"{k} x{n}" for k, n in sorted(bit.items())) or "none"))
    if evidence:
        return CheckResult.verdict(passed=False, message=effects.message if not effects.passed else
                                   f"{len(evidence)} effect(s) applied more than once", evidence=evidence, **args)
    return CheckResult.verdict(passed=True, message=(
        f"totals match {len(orders)} distinct orders; {len(ids_per_key)} acknowledged keys, one order each; "
        f"no body applied more often than it was requested"), **args)


def check_final_status(history: History, **args) -> CheckResult:
    """Each order ends as the client was told: cancelled if a cancel was answered 200, else placed.
    Orders with a cancel of unknown outcome are left out (either state is right)."""
    if (bad := unreadable(history, **args)) is not None:
        return bad
    orders, _ = downstream(history)
    cancelled, unsure = set(), set()
    for op in history.ops("cancel"):
        order_id = _cancelled_id(op)
        (cancelled if op.type == "ok" else unsure if op.type == "info" else set()).add(order_id)
    expected = {o: ("cancelled" if o in cancelled else "placed")
                for o in placed(history, before=observed_at(history)) if o in orders and o not in unsure}
    return check_final_state(expected=expected, observed={o: orders[o][2] for o in expected}, **args)


# --- change events (lab 2): the topic as the grader read it ------------------------------------

EVENTS = "events"  # observation: the records of the events topic (grader.observe.observe_topic)


def _payloads(history: History) -> list[tuple[dict, dict]]:
    """(record, parsed payload) of every observed event record whose value is a JSON object."""
    import json

    seen = history.last_observation(EVENTS) or {}
    out = []
    for r in seen.get("records", []):
        try:
            payload = json.loads(r.get("value") or "")
        except ValueError:
            continue
        if isinstance(payload, dict):
            out.append((r, payload))
    return out


def check_no_phantoms(history: History, prefix: str = "reject-", **args) -> CheckResult:
    """Orders the database refused at COMMIT (grader/nemesis/database.py RejectCommits: every order
    of a customer starting with `prefix`) must appear nowhere: not in the topic, not downstream,
    and never be acknowledged."""
    if (bad := unreadable(history, **args)) is not None:
        return bad
    refused = [op for op in history.ops("place") if isinstance(op.invoke.get("body"), dict)
               and str(op.invoke["body"].get("customer_id", "")).startswith(prefix)]
    if not refused:
        return CheckResult.error(message="no order the database refuses was sent (the run did not get there)", **args)
    orders, _ = downstream(history)
    evidence = [f"request #{op.id} (customer {op.invoke['body']['customer_id']}) was answered {op.result.get('status')} "
                f"although its transaction was refused at COMMIT" for op in refused if op.type == "ok"]
    evidence += [f"event in {r.get('key')}@{r.get('partition')}:{r.get('offset')} for refused order {p.get('order_id')} "
                 f"(customer {p.get('customer_id')}): published although its transaction rolled back"
                 for r, p in _payloads(history) if str(p.get("customer_id", "")).startswith(prefix)]
    evidence += [f"downstream order {o} of refused customer {c}" for o, (c, _, _) in orders.items()
                 if str(c).startswith(prefix)]
    if evidence:
        return CheckResult.verdict(passed=False, message=f"{len(evidence)} trace(s) of orders whose transaction "
                                   f"rolled back", evidence=evidence, **args)
    return CheckResult.verdict(passed=True, message=f"none of {len(refused)} refused orders appears in the topic "
                               f"or downstream, none was acknowledged", **args)


OUTBOX = "outbox"  # observation (lab 2): the outbox rows (aggregateid, payload) as the grader read them


@dataclass(frozen=True)
class Loss:
    """An acknowledged operation that never took effect downstream, and who lost it."""

    label: str
    op: Op
    what: str
    component: str | None  # "projector" | "relay" | "order service"; None when the run cannot tell
    where: str  # what the grader's reads show, in words


def _published(history: History) -> dict[tuple[str, str], str] | None:
    """(order id, status) -> where its event is in the topic ("partition:offset"); None if not observed."""
    if history.last_observation(EVENTS) is None:
        return None
    return {(str(p.get("order_id")), str(p.get("status"))): f"{r.get('partition')}:{r.get('offset')}"
            for r, p in _payloads(history)}


def _in_outbox(history: History) -> set[tuple[str, str]] | None:
    """(order id, status) of every outbox row the grader read; None if it could not read them."""
    import json

    seen = history.last_observation(OUTBOX)
    if seen is None or seen.get("error"):
        return None
    out = set()
    for aggregate_id, payload in seen.get("rows", []):
        try:
            status = json.loads(payload).get("status") if isinstance(payload, str) else None
        except (ValueError, AttributeError):
            status = None
        out.add((str(aggregate_id), str(status)))
    return out


def losses(history: History) -> list[Loss]:
    """Every acknowledged operation missing downstream, attributed by what the grader read: its event
    in the topic -> the projector lost it; in the outbox but not the topic -> the relay; in neither
    -> the order service. (Lab 1 reads no topic: component None.)"""
    published, outbox = _published(history), _in_outbox(history)
    out = []
    for label, op, what, applied in acknowledged(history):
        if applied:
            continue
        order_id = _cancelled_id(op) if op.f == "cancel" else label
        status = "cancelled" if op.f == "cancel" else "placed"
        component, where = None, ""
        if published is not None:
            if (order_id, status) in published:
                component, where = "projector", f"the relay published its event ({published[order_id, status]}); the projector never applied it"
            elif outbox is not None and (order_id, status) not in outbox:
                component, where = "order service", "no outbox row for it: the order service never wrote its event"
            else:
                component, where = "relay", "its event is not in the topic" + (": the relay never published its outbox row"
                                                                              if outbox is not None else "")
        out.append(Loss(label, op, what, component, where))
    return out


Claim = tuple[tuple[tuple[str, "str | None"], ...], "tuple[str, ...] | None"]  # (faults, components)


def _windows(history: History, faults, before: float) -> list[tuple[float, float, str]]:
    return [(f["start"] - before, f["end"], f.get("description") or f["fault"]) for f in fault_events(history)
            if f["effective"] and f["start"] is not None and f["end"] is not None
            and any(f["fault"] == k and (t is None or f["target"] == t) for k, t in faults)]


BEFORE = 10.0  # an operation acknowledged this long before a fault was still in flight when it struck


def claimed_by(history: History, loss: Loss, claim: Claim, before: float = BEFORE) -> tuple[float, float, str] | None:
    """The window of one of the claim's faults the loss was acknowledged in, if its component is one
    the claim judges (a relay check judges what the relay lost, not the projector's losses)."""
    faults, components = claim
    if components is not None and loss.component is not None and loss.component not in components:
        return None
    t = loss.op.t_complete or 0
    return next((w for w in _windows(history, faults, before) if w[0] <= t <= w[1]), None)


def _loss_line(history: History, loss: Loss) -> str:
    return f"{loss.label}: {loss.what} ({_detail(loss.op)}{fault_after(history, loss.op.t_complete)})" + \
        (f"; {loss.where}" if loss.where else "")


def no_lost_except(*claims: Claim):
    """check_no_lost_orders, leaving out the losses another check judges (`claims`, see lost_around):
    each loss fails exactly one check."""
    def check(history: History, **args) -> CheckResult:
        if (bad := unreadable(history, **args)) is not None:
            return bad
        settling = unsettled(history)
        lost = [loss for loss in losses(history) if not any(claimed_by(history, loss, c) for c in claims)]
        elsewhere = len(losses(history)) - len(lost)
        acked = acknowledged(history)
        note = f"; {elsewhere} more judged by the checks of the faults they met" if elsewhere else ""
        if lost:
            return CheckResult.verdict(passed=False, message=f"{len(lost)} of {len(acked)} acknowledged operations "
                                       f"never took effect downstream{note}{settling}",
                                       evidence=[_loss_line(history, loss) for loss in lost], **args)
        return CheckResult.verdict(passed=True, message=f"all {len(acked)} acknowledged operations took effect "
                                   f"downstream{note}", **args)
    return check


def lost_around(*faults: tuple[str, str | None], before: float = BEFORE, components: tuple[str, ...] | None = None,
                unless: tuple[Claim, ...] = ()):
    """A checker: every operation acknowledged from `before` seconds ahead of one of these faults
    ((kind, target) pairs) until its end - in flight when it struck - took effect downstream. Only
    losses of `components` count (None: any), and none another check claims (`unless`)."""
    def check(history: History, **args) -> CheckResult:
        if (bad := unreadable(history, **args)) is not None:
            return bad
        windows = _windows(history, faults, before)
        acked = {label for label, op, _, _ in acknowledged(history)
                 if any(w[0] <= (op.t_complete or 0) <= w[1] for w in windows)}
        missing = []
        for loss in losses(history):
            w = claimed_by(history, loss, (faults, components), before)
            if w is not None and not any(claimed_by(history, loss, c) for c in unless):
                missing.append(f"{loss.label}: {_detail(loss.op)}; in flight during: {w[2]} (t={w[0] + before:.1f}s)"
                               + (f"; {loss.where}" if loss.where else ""))
        if missing:
            return CheckResult.verdict(passed=False, message=f"{len(missing)} of {len(acked)} operations acknowledged "
                                       f"around the faults never took effect downstream", evidence=missing, **args)
        return CheckResult.verdict(passed=True, message=f"all {len(acked)} operations acknowledged around "
                                   f"{len(windows)} fault(s) took effect downstream" +
                                   (" (or were lost by another component, judged elsewhere)" if components else ""), **args)
    return check


def check_aggregate_order(history: History, **args) -> CheckResult:
    """Per order: all its events on one partition; new versions appear in order (a re-send may
    repeat older ones after a crash, never introduce a version before its predecessor); and the
    downstream status is the one the client was told last (check_final_status)."""
    records = _payloads(history)
    if not records:
        return CheckResult.error(message="the events topic was never observed (the run did not get there)", **args)
    partitions: dict[str, set] = defaultdict(set)
    firsts: dict[str, list[tuple[int, int]]] = defaultdict(list)  # key -> (offset, version) of first sightings
    seen_versions: dict[str, set] = defaultdict(set)
    for r, p in sorted(records, key=lambda rp: (rp[0]["partition"], rp[0]["offset"])):
        key, version = str(r.get("key")), p.get("version")
        partitions[key].add(r["partition"])
        if version not in seen_versions[key]:
            seen_versions[key].add(version)
            firsts[key].append((r["offset"], version))
    evidence = [f"order {k}: events on partitions {sorted(v)} (one key must mean one partition)"
                for k, v in sorted(partitions.items()) if len(v) > 1]
    for key, seq in sorted(firsts.items()):
        versions = [v for _, v in seq if isinstance(v, int)]
        if versions != sorted(versions):
            evidence.append(f"order {key}: versions first published in the order {versions} (offsets "
                            f"{[o for o, _ in seq]}), not in commit order")
    final = check_final_status(history, **args)
    evidence += final.evidence if not final.passed else []
    if evidence:
        return CheckResult.verdict(passed=False, message=f"{len(evidence)} ordering problem(s)", evidence=evidence, **args)
    return CheckResult.verdict(passed=True, message=f"{len(partitions)} orders: one partition each, versions in "
                               f"commit order; {final.message}", **args)
