"""Lab 1: exactly-once effects on at-least-once delivery.

The play, in order (every step recorded in the history):
1. contract probes against the order API (missing key, bad body, replay, key reuse, concurrent key);
2. load: orders with client retries and cancels, while the read model is SIGKILLed at crash points
   (just before, then just after, its offset commit) and once more at random, and restarted;
3. a broker cut: orders sent while Kafka is unreachable, the API SIGKILLed mid-cut, then healed and
   the same requests retried with their keys;
4. duplicates of existing events injected straight into the topic;
5. quiesce (consumer lag 0 and the read model stable), then judge lost / duplicated / ordering;
6. a poison message: malformed events must go to the DLQ while the consumer keeps going.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from contextlib import closing
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import psycopg
from confluent_kafka import Consumer, Producer

from ..checks import Case, CheckResult, check_duplicates, check_expectations, check_final_state, check_lost, check_unique
from ..nemesis.crashpoints import crash_env, crash_reached
from ..nemesis.duplicates import inject_duplicates
from ..kafka import CLIENT_DEFAULTS, QUIET, group_lag
from ..launch import Service
from ..runner import Run
from ..wait import WaitTimeout, wait_until
from ..workload import HttpWorkload, Reply

ORDERS = 120  # at least this many; more while planned crashes are still pending
LOAD_RATE = 40  # orders per second: a rejoin after a SIGKILL takes ~10 s on Tansu
LOAD_MAX_SECONDS = 90
CONCURRENCY = 6
CUSTOMERS = 8
RETRY_RATE = 0.15
CANCEL_RATE = 0.2
DUPLICATES = 15
CUT_ORDERS = 4
PROXY_DELAY_MS = 1500
QUIESCE_TIMEOUT = 60


@dataclass
class Ledger:
    """What the client side was told: the ground truth the read model is judged against."""

    acked: dict[str, dict] = field(default_factory=dict)  # order_id -> customer, amount, key, detail
    cancels_acked: set[str] = field(default_factory=set)
    cancels_unsure: set[str] = field(default_factory=set)  # sent, but no clear answer
    key_orders: list[tuple[str, str]] = field(default_factory=list)  # (idempotency key, order_id)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def place(self, reply: Reply, key: str, body: dict, t: float) -> str | None:
        if reply.status != 201 or not isinstance(reply.body, dict) or "order_id" not in reply.body:
            return None
        order_id = str(reply.body["order_id"])
        with self.lock:
            self.key_orders.append((key, order_id))
            self.acked.setdefault(order_id, {
                "customer": body["customer_id"], "amount": body["amount_cents"], "key": key,
                "detail": f"request #{reply.n}, key {key}, 201 at t={t:.1f}s"})
        return order_id

    def cancel(self, order_id: str, reply: Reply) -> None:
        with self.lock:
            (self.cancels_acked if reply.status == 200 else self.cancels_unsure).add(order_id)


def order_body(run: Run) -> dict:
    return {"customer_id": f"c-{run.rng.randrange(CUSTOMERS)}", "amount_cents": run.rng.randrange(100, 10_000)}


def new_key(run: Run) -> str:
    return str(uuid.UUID(int=run.rng.getrandbits(128), version=4))


# --- 1. contract ------------------------------------------------------------------------------

def probe_contract(run: Run, client: HttpWorkload, ledger: Ledger) -> CheckResult:
    cases: list[Case] = []

    def case(name: str, expected: str, reply: Reply, ok: bool) -> None:
        cases.append(Case(name, expected, reply.describe(), ok, f"request #{reply.n}"))

    body = order_body(run)
    r = client.send("place", "POST", "/orders", body=body)
    case("POST /orders without Idempotency-Key", "400 with a JSON error body", r, r.status == 400 and r.is_json)
    r = client.send("place", "POST", "/orders", key=new_key(run), raw=b'{"customer_id": "c-1", "amount_cents": ')
    case("malformed JSON body", "400 or 422 with a JSON error body", r, r.status in (400, 422) and r.is_json)
    r = client.send("place", "POST", "/orders", key=new_key(run), body={"customer_id": "", "amount_cents": -5})
    case("invalid fields (empty customer, negative amount)", "400 or 422 with a JSON error body", r,
         r.status in (400, 422) and r.is_json)

    key = new_key(run)
    first = client.send("place", "POST", "/orders", key=key, body=body)
    order_id = ledger.place(first, key, body, run.history.elapsed())
    case("new order", "201 with an order_id", first, order_id is not None)
    again = client.send("place", "POST", "/orders", key=key, body=body)
    ledger.place(again, key, body, run.history.elapsed())
    case("same key, same body (a client retry)", f"the first response replayed: {first.describe()}", again,
         again.status == first.status and again.body == first.body)
    other = client.send("place", "POST", "/orders", key=key, body={**body, "amount_cents": body["amount_cents"] + 1})
    case("same key, different body", "422 with a JSON error body", other, other.status == 422 and other.is_json)

    if run.kafka_proxy is not None:
        cases.append(concurrent_same_key(run, client, ledger))
    else:
        run.note(f"the {run.stack.runtime} runtime has no fault proxy: the concurrent-key (409) case was not run")

    r = client.send("cancel", "POST", f"/orders/{uuid.uuid4()}/cancel", key=new_key(run), body={})
    case("cancel an order that does not exist", "404 with a JSON error body", r, r.status == 404 and r.is_json)
    return check_expectations(cases=cases, **run.spec_args("api-contract"))


def concurrent_same_key(run: Run, client: HttpWorkload, ledger: Ledger) -> Case:
    """Two requests with one key while the broker is slow: one must win, the other get 409."""
    key, body = new_key(run), order_body(run)
    run.kafka_proxy.delay(PROXY_DELAY_MS)  # keeps the first request in progress for a while
    try:
        with ThreadPoolExecutor(2) as pool:
            replies = list(pool.map(lambda _: client.send("place", "POST", "/orders", key=key, body=body), range(2)))
    finally:
        run.kafka_proxy.delay(0)
    for reply in replies:
        ledger.place(reply, key, body, run.history.elapsed())
    statuses = sorted(r.status for r in replies)
    actual = ", ".join(r.describe() for r in replies)
    return Case("two concurrent requests with the same key", "one 201 and one 409", actual, statuses == [201, 409],
                f"requests #{replies[0].n} and #{replies[1].n}, broker delayed {PROXY_DELAY_MS} ms")


# --- 2. load under crashes --------------------------------------------------------------------

class ReadModelNemesis:
    """Kills the read model at crash points and at random, restarting it each time.

    Lives: (1) SIGKILL just before its Nth offset commit - the DB transaction is done, the offset
    is not, so events come again; (2, 3) SIGKILL just after an offset commit - anything committed
    before it was applied is lost; (4) a plain SIGKILL once more orders were acknowledged.
    """

    def __init__(self, run: Run, service: Service, ledger: Ledger) -> None:
        self.run, self.service, self.ledger = run, service, ledger
        # Two "after" points: the record lost by a commit-first consumer may be a cancel, not an order.
        self.plan = [("before", run.rng.randrange(8, 30)), ("after", run.rng.randrange(8, 30)),
                     ("after", run.rng.randrange(8, 30))]
        self.life = 0
        self.own_deaths = 0
        self.random_kill_pending = True  # one plain SIGKILL after the crash points
        self.random_kill_at: int | None = None
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="read-model-nemesis", daemon=True)
        self.error: BaseException | None = None

    def marker(self) -> str:
        return str(self.run.out_dir / f"crash-{self.life}.json")

    def start_life(self) -> None:
        self.life += 1
        if self.plan:
            when, nth = self.plan.pop(0)
            env = crash_env("consumer-ack", when, nth, self.marker())
            self.run.note(f"read_model life {self.life}: armed to SIGKILL itself {when} offset commit #{nth}")
            self._relaunch(env)
        else:
            if self.random_kill_pending:
                self.random_kill_pending = False
                with self.ledger.lock:
                    self.random_kill_at = len(self.ledger.acked) + self.run.rng.randrange(10, 30)
            self._relaunch()

    def _relaunch(self, env: dict[str, str] | None = None) -> None:
        if self.service.proc:
            self.service.restart(env)
        else:
            self.service.start(env)

    def _watch(self) -> None:
        try:
            while not self.stop_event.wait(0.05):
                self._step()
        except BaseException as e:  # surfaced by finish(); the run must not hang on it
            self.error = e

    def _step(self) -> None:
        if not self.service.alive():
            reached = crash_reached(self.marker())
            if reached:
                self.run.note(f"read_model SIGKILLed at {reached.get('point')} {reached.get('when')} "
                              f"call #{reached.get('nth')}; restarting")
            else:
                self.own_deaths += 1
                self.run.note(f"read_model exited by itself (code {self.service.exit_code()}); restarting")
                if self.own_deaths > 3:
                    self.run.note("read_model keeps dying; leaving it down")
                    self.stop_event.set()
                    return
            self.start_life()
        elif self.random_kill_at is not None:
            with self.ledger.lock:
                due = len(self.ledger.acked) >= self.random_kill_at
            if due:
                self.random_kill_at = None
                self.run.history.record("fault", "nemesis", fault="sigkill", target="read_model")
                self.run.note("read_model SIGKILLed under load (random point); restarting")
                self.service.kill()
                self.start_life()

    def begin(self) -> "ReadModelNemesis":
        self.start_life()
        self.thread.start()
        return self

    def done(self) -> bool:
        """True once every planned crash and the random kill have happened (or it gave up)."""
        return self.stop_event.is_set() or not (self.plan or self.random_kill_pending or self.random_kill_at)

    def finish(self) -> None:
        """Stop injecting; leave the read model running unarmed for the phases that follow."""
        self.stop_event.set()
        self.thread.join(30)
        for when, nth in self.plan:
            self.run.note(f"crash point {when} offset commit #{nth} was never reached (is the offset committed?)")
        self.plan = []
        if self.error:
            raise self.error
        if self.own_deaths <= 3 and (not self.service.alive() or self.service.extra_env):
            self.service.restart()


def load(run: Run, client: HttpWorkload, ledger: Ledger, nemesis: ReadModelNemesis) -> None:
    """Orders in waves until ORDERS were sent and the nemesis is through (MAX_ORDERS at most)."""
    def plan():
        return (new_key(run), order_body(run), run.rng.random() < RETRY_RATE, run.rng.random() < CANCEL_RATE,
                new_key(run))

    def one(plan) -> None:
        key, body, retry, cancel, cancel_key = plan
        reply = client.send("place", "POST", "/orders", key=key, body=body)
        order_id = ledger.place(reply, key, body, run.history.elapsed())
        if retry:  # the client did not trust the answer and sent the same request again
            again = client.send("place", "POST", "/orders", key=key, body=body, retry=True)
            order_id = ledger.place(again, key, body, run.history.elapsed()) or order_id
        if cancel and order_id:
            ledger.cancel(order_id, client.send("cancel", "POST", f"/orders/{order_id}/cancel", key=cancel_key, body={}))

    sent, started, pace = 0, time.monotonic(), threading.Event()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        while sent < ORDERS or (not nemesis.done() and time.monotonic() - started < LOAD_MAX_SECONDS):
            wave = [plan() for _ in range(CONCURRENCY * 2)]
            list(pool.map(one, wave))
            sent += len(wave)
            pace.wait(max(0.0, started + sent / LOAD_RATE - time.monotonic()))  # hold the rate, not a fixed sleep
    run.note(f"load: {len(ledger.acked)} orders acknowledged, {len(ledger.cancels_acked)} cancels acknowledged")


# --- 3. broker cut ----------------------------------------------------------------------------

def broker_cut(run: Run, api: Service, client: HttpWorkload, ledger: Ledger) -> None:
    if run.kafka_proxy is None:
        run.note(f"the {run.stack.runtime} runtime has no fault proxy: the broker cut was not run")
        return
    plans = [(new_key(run), order_body(run)) for _ in range(CUT_ORDERS)]
    run.kafka_proxy.cut()
    run.history.record("fault", "nemesis", fault="cut", target="kafka")
    try:
        with ThreadPoolExecutor(CUT_ORDERS) as pool:
            replies = list(pool.map(lambda p: client.send("place", "POST", "/orders", key=p[0], body=p[1], cut=True), plans))
        for (key, body), reply in zip(plans, replies):
            ledger.place(reply, key, body, run.history.elapsed())
        statuses = ", ".join(str(r.status) for r in replies)
        run.note(f"broker cut: {CUT_ORDERS} orders sent, answers {statuses}; SIGKILL order_api")
        api.kill()
    finally:
        run.kafka_proxy.heal()
        run.history.record("fault", "nemesis", fault="heal", target="kafka")
    api.start()
    api.wait_healthy()
    for key, body in plans:  # the client retries what it was not sure about, with the same keys
        ledger.place(client.send("place", "POST", "/orders", key=key, body=body, retry=True), key, body,
                     run.history.elapsed())


# --- 4/5. duplicates, quiesce, observe --------------------------------------------------------

def quiesce(run: Run, read_model: Service) -> None:
    topic, group = run.ns.topic("orders"), run.ns.group("read-model")
    state = {"rows": -1, "since": time.monotonic()}

    def settled() -> bool:
        rows = count_orders(run)
        if rows != state["rows"]:
            state.update(rows=rows, since=time.monotonic())
        return group_lag(run.kafka, group, topic) == 0 and time.monotonic() - state["since"] >= 1.5

    try:
        wait_until(settled, QUIESCE_TIMEOUT, "the read model to catch up (lag 0, rows stable)",
                   interval=0.25, ignore=(psycopg.Error,))
    except WaitTimeout as e:
        alive = "running" if read_model.alive() else f"not running (exit code {read_model.exit_code()})"
        run.note(f"{e}; read_model is {alive}")


def count_orders(run: Run) -> int:
    with psycopg.connect(run.ns.database_url, connect_timeout=5) as conn:
        return conn.execute("SELECT count(*) FROM orders").fetchone()[0]


def observe(run: Run) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """(orders: id -> (customer, amount, status), totals: customer -> (count, cents))."""
    with psycopg.connect(run.ns.database_url, connect_timeout=5) as conn:
        orders = {str(o): (c, a, s) for o, c, a, s in
                  conn.execute("SELECT order_id, customer_id, amount_cents, status FROM orders")}
        totals = {c: (n, t) for c, n, t in
                  conn.execute("SELECT customer_id, order_count, total_cents FROM customer_totals")}
    return orders, totals


def judge(run: Run, ledger: Ledger) -> list[CheckResult]:
    try:
        orders, totals = observe(run)
    except psycopg.Error as e:
        message = f"could not read the read model's tables (orders, customer_totals): {e}".strip()
        return [CheckResult.error(message=message, **run.spec_args(cid))
                for cid in ("no-lost-orders", "no-duplicate-effects", "ordering")]
    lost = check_lost(acknowledged={o: f"{v['customer']}, {v['amount']} cents ({v['detail']})" for o, v in ledger.acked.items()},
                      applied=set(orders), **run.spec_args("no-lost-orders"))

    # Effects: each customer's totals must equal what its distinct orders add up to.
    expected: dict[str, int] = {}
    for customer, amount, status in orders.values():
        if status == "placed":
            expected[f"{customer} total_cents"] = expected.get(f"{customer} total_cents", 0) + amount
            expected[f"{customer} order_count"] = expected.get(f"{customer} order_count", 0) + 1
    observed: dict[str, int] = {}
    for customer, (count, cents) in totals.items():
        if count or cents or f"{customer} order_count" in expected:
            observed[f"{customer} total_cents"], observed[f"{customer} order_count"] = cents, count
    for name in expected:
        observed.setdefault(name, 0)
    args = run.spec_args("no-duplicate-effects")
    effects = check_duplicates(expected=expected, observed=observed, **args)
    unique = check_unique(items=ledger.key_orders, **args)
    duplicates = effects if not effects.passed else unique
    if effects.passed and unique.passed:
        duplicates.message = (f"{len(expected) // 2} customers' totals match their {len(orders)} distinct orders; "
                              f"{len(ledger.key_orders)} acknowledged requests, one order per idempotency key")

    expected_status = {o: ("cancelled" if o in ledger.cancels_acked else "placed")
                       for o in ledger.acked if o in orders and o not in ledger.cancels_unsure}
    ordering = check_final_state(expected=expected_status, observed={o: orders[o][2] for o in expected_status},
                                 **run.spec_args("ordering"))
    return [lost, duplicates, ordering]


# --- 6. poison --------------------------------------------------------------------------------

def poison(run: Run, client: HttpWorkload, ledger: Ledger, read_model: Service) -> CheckResult:
    topic, dlq = run.ns.topic("orders"), run.ns.topic("orders.dlq")
    bad = [(b"poison-1", b"this is not JSON"),
           (b"poison-2", json.dumps({"type": "OrderPlaced", "event_id": str(uuid.uuid4())}).encode())]
    producer = Producer({"bootstrap.servers": run.kafka, **QUIET})
    for key, value in bad:
        producer.produce(topic, key=key, value=value)
    producer.flush(15)
    run.history.record("fault", "nemesis", fault="poison", topic=topic, count=len(bad))
    key, body = new_key(run), order_body(run)
    follow_up = ledger.place(client.send("place", "POST", "/orders", key=key, body=body), key, body,
                             run.history.elapsed())
    cases = []
    dead = dlq_records(run, dlq, want=len(bad))
    applied = follow_up is not None and wait_for_order(run, follow_up, read_model)
    cases.append(Case("consumer still running after malformed events", "running",
                      "running" if read_model.alive() else f"exited with code {read_model.exit_code()}",
                      read_model.alive()))
    with_error = [r for r in dead if r[1]]
    cases.append(Case("malformed events in the dead-letter topic", f"{len(bad)} records in {dlq} with an 'error' header",
                      f"{len(dead)} records, {len(with_error)} with an 'error' header", len(with_error) >= len(bad)))
    cases.append(Case("an order placed after the malformed events", "applied to the read model",
                      "applied" if applied else "not applied", applied))
    return check_expectations(cases=cases, **run.spec_args("poison-message"))


def wait_for_order(run: Run, order_id: str, read_model: Service, timeout: float = 30) -> bool:
    def applied() -> bool:
        if not read_model.alive():
            raise WaitTimeout("read model is down")
        with psycopg.connect(run.ns.database_url, connect_timeout=5) as conn:
            return conn.execute("SELECT 1 FROM orders WHERE order_id = %s", (order_id,)).fetchone() is not None

    try:
        return wait_until(applied, timeout, f"order {order_id} in the read model", ignore=(psycopg.Error,))
    except WaitTimeout:
        return False


def dlq_records(run: Run, topic: str, want: int, timeout: float = 20) -> list[tuple[bytes, str | None]]:
    """(value, error header) of the DLQ's records; stops early once `want` are in."""
    consumer = Consumer({"bootstrap.servers": run.kafka, "group.id": f"grader-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False, **CLIENT_DEFAULTS})
    records: list[tuple[bytes, str | None]] = []
    try:
        consumer.subscribe([topic])

        def enough() -> bool:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                headers = dict(msg.headers() or [])
                error = headers.get("error")
                records.append((msg.value(), error.decode(errors="replace") if error else None))
            return len(records) >= want

        wait_until(enough, timeout, f"{want} records in {topic}", interval=0)
    except WaitTimeout:
        pass
    finally:
        consumer.close()
    return records


# --- the play ---------------------------------------------------------------------------------

def run(run: Run) -> list[CheckResult]:
    api, read_model = run.services["order_api"], run.services["read_model"]
    run.say("starting order_api and read_model")
    ledger = Ledger()
    nemesis = ReadModelNemesis(run, read_model, ledger).begin()  # joins its group while we probe the API
    try:
        api.start()
        api.wait_healthy()
    except BaseException:
        nemesis.finish()
        raise
    with closing(HttpWorkload(api.base_url, run.history)) as client:
        try:
            run.say("probing the API contract")
            results = [probe_contract(run, client, ledger)]
            run.say("load with crash points and kills")
            load(run, client, ledger, nemesis)
        finally:
            nemesis.finish()
        run.say("broker cut")
        broker_cut(run, api, client, ledger)
        originals = inject_duplicates(run.kafka, run.ns.topic("orders"), DUPLICATES, run.seed)
        run.history.record("fault", "nemesis", fault="duplicates", originals=originals)
        run.note(f"injected {len(originals)} duplicate events into the topic")
        run.say("waiting for the read model to catch up")
        quiesce(run, read_model)
        results += judge(run, ledger)
        run.say("poison messages")
        results.append(poison(run, client, ledger, read_model))
        return results


# --- live mode (`make lab-1`): steady traffic and what to show -------------------------------

@dataclass
class TrafficStats:
    sent: int = 0
    acked: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)


def traffic(run: Run, stop: threading.Event, stats: TrafficStats, rate: float = 10.0) -> None:
    """Orders at about `rate` per second until `stop`, with the odd client retry and cancel."""
    client = HttpWorkload(run.services["order_api"].base_url, run.history)
    ledger = Ledger()
    try:
        while not stop.wait(1 / rate):
            key, body = new_key(run), order_body(run)
            reply = client.send("place", "POST", "/orders", key=key, body=body)
            stats.sent += 1
            order_id = ledger.place(reply, key, body, run.history.elapsed())
            if order_id:
                stats.acked += 1
                if run.rng.random() < RETRY_RATE:
                    client.send("place", "POST", "/orders", key=key, body=body, retry=True)
                if run.rng.random() < CANCEL_RATE:
                    client.send("cancel", "POST", f"/orders/{order_id}/cancel", key=new_key(run), body={})
            else:
                label = str(reply.status or reply.error.split(":")[0])
                stats.errors[label] = stats.errors.get(label, 0) + 1
    finally:
        client.close()


def metrics(run: Run, stats: TrafficStats) -> dict[str, str]:
    elapsed = max(time.monotonic() - stats.started, 1e-9)
    shown = {"orders sent": str(stats.sent), "acknowledged (201)": f"{stats.acked}  ({stats.acked / elapsed:.1f}/s)",
             "errors": ", ".join(f"{k}: {v}" for k, v in sorted(stats.errors.items())) or "none"}
    try:
        shown["consumer lag"] = str(group_lag(run.kafka, run.ns.group("read-model"), run.ns.topic("orders"), timeout=2))
    except Exception as e:  # the view must survive a broker hiccup
        shown["consumer lag"] = f"? ({type(e).__name__})"
    try:
        orders, totals = observe(run)
        placed: dict[str, int] = {}
        for customer, amount, status in orders.values():
            if status == "placed":
                placed[customer] = placed.get(customer, 0) + amount
        off = [c for c, (_, cents) in totals.items() if cents != placed.get(c, 0)]
        shown["orders in read model"] = str(len(orders))
        shown["customers with wrong totals"] = (f"{len(off)} (duplicates applied?)" if off else "0")
    except psycopg.Error as e:
        shown["read model"] = f"not readable yet: {str(e).strip().splitlines()[0]}"
    return shown
