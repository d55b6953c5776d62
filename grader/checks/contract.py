"""The idempotency-key contract (Stripe / the IETF Idempotency-Key draft), judged from probe
operations in the history (see grader/workloads/contract.py)."""
from __future__ import annotations

from collections import defaultdict

from ..history import History, Op
from .generic import Case, check_expectations
from .result import CheckResult


def _desc(op: Op) -> str:
    status = op.result.get("status")
    if not status:
        return f"no answer ({op.result.get('error') or 'never completed'})"
    body = op.result.get("body")
    return f"{status} {str(body)[:160] if body is not None else '(not JSON)'}"


def _json(op: Op) -> bool:
    return op.result.get("body") is not None


def _case(cases: list[Case], name: str, expected: str, op: Op, ok: bool) -> None:
    cases.append(Case(name, expected, _desc(op), ok, f"request #{op.id}"))


def check_api_contract(history: History, **args) -> CheckResult:
    probes: dict[str, list[Op]] = defaultdict(list)
    first_ok: dict[str, Op] = {}
    for op in history.ops():
        if op.invoke.get("probe"):
            probes[op.invoke["probe"]].append(op)
        elif op.type == "ok" and op.invoke.get("key"):
            first_ok.setdefault(op.invoke["key"], op)
    if not probes:
        return CheckResult.error(message="the API was never probed (the run did not get there)", **args)
    cases: list[Case] = []
    status = lambda op: op.result.get("status")  # noqa: E731
    for op in probes["no-key"]:
        _case(cases, "POST /orders without Idempotency-Key", "400 with a JSON error body", op,
              status(op) == 400 and _json(op))
    for op in probes["malformed"]:
        _case(cases, "malformed JSON body", "400 or 422 with a JSON error body", op, status(op) in (400, 422) and _json(op))
    for op in probes["invalid"]:
        _case(cases, "invalid fields (empty customer, negative amount)", "400 or 422 with a JSON error body", op,
              status(op) in (400, 422) and _json(op))
    new = probes["new"][0] if probes["new"] else None
    if new is not None:
        order_id = (new.result.get("body") or {}).get("order_id") if isinstance(new.result.get("body"), dict) else None
        _case(cases, "new order", "201 with an order_id", new, status(new) == 201 and bool(order_id))
        for op in probes["replay"]:
            _case(cases, "same key, same body (a client retry)", f"the first response replayed: {_desc(new)}", op,
                  status(op) == status(new) and op.result.get("body") == new.result.get("body"))
    for op in probes["reuse"]:
        _case(cases, "same key, different body", "422 with a JSON error body", op, status(op) == 422 and _json(op))
    if probes["concurrent"]:
        pair = probes["concurrent"]
        statuses = sorted(status(op) or 0 for op in pair)
        cases.append(Case("two concurrent requests with the same key (broker slowed)", "one 201 and one 409",
                          ", ".join(_desc(op) for op in pair), statuses == [201, 409],
                          " and ".join(f"request #{op.id}" for op in pair)))
    for op in probes["cancel-unknown"]:
        _case(cases, "cancel an order that does not exist", "404 with a JSON error body", op,
              status(op) == 404 and _json(op))
    for op in probes["replay-after-restart"]:
        original = first_ok.get(op.invoke.get("key"))
        if original is None:
            continue
        _case(cases, f"acknowledged request sent again after the API was SIGKILLed and restarted (key {op.invoke['key']})",
              f"the stored answer replayed: {_desc(original)} (request #{original.id})", op,
              status(op) == status(original) and op.result.get("body") == original.result.get("body"))
    cases += retried_unknown_cases(history)
    return check_expectations(cases=cases, **args)


def retried_after_unknown(history: History) -> dict[str, tuple[Op, list[Op]]]:
    """key -> (its first place request whose outcome the client never learned, the requests sent
    again with that key after it). A key retried after an unknown outcome: whatever the first one
    did, the retry's answer must now say so."""
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in history.ops("place"):
        if op.invoke.get("key"):
            by_key[op.invoke["key"]].append(op)
    out = {}
    for key, ops in by_key.items():
        first = next((op for op in ops if op.type == "info"), None)
        later = [op for op in ops if first is not None and op.id > first.id
                 and op.t_invoke >= (first.t_complete or first.t_invoke) and op.result.get("status")]
        if first is not None and later:
            out[key] = (first, later)
    return out


def retried_unknown_cases(history: History) -> list[Case]:
    """A key retried after an unknown outcome whose order exists downstream must be answered 201 with
    that order's id: the order was committed, so the key stands for it (a second transaction for the
    stored answer leaves the key without one, and the retry fails although the order exists).
    An order "exists for the key" when a downstream order has the key's body and no request was
    ever answered with its id (bodies are drawn from ~80,000 values: a clash is rare)."""
    from .orders import DOWNSTREAM, _body_key, placed  # orders imports nothing from here

    seen = history.last_observation(DOWNSTREAM)
    if not seen or seen.get("error"):
        return []
    claimed = set(placed(history))
    unclaimed: dict[tuple, list[str]] = defaultdict(list)
    for order_id, customer, amount, status in seen.get("orders", []):
        if str(order_id) not in claimed and not (status == "cancelled" and amount == 0):
            unclaimed[(str(customer), amount)].append(str(order_id))
    cases = []
    for key, (first, later) in sorted(retried_after_unknown(history).items()):
        if any(op.type == "ok" for op in later):
            continue  # answered 2xx with an id: the lost/duplicate checks judge that id downstream
        orders = unclaimed.get(_body_key(first.invoke.get("body")) or (), [])
        if orders:
            last = later[-1]
            cases.append(Case(f"key {key} retried after an unknown outcome (request #{first.id}: {_desc(first)}), "
                              f"its order {orders[0]} exists downstream",
                              f"201 with order_id {orders[0]}", _desc(last), False,
                              f"request #{last.id}" + (f" (and {len(later) - 1} earlier retries)" if len(later) > 1 else "")))
    return cases
