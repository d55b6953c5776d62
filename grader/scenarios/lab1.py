"""Lab 1: exactly-once effects on at-least-once delivery.

Every gap between an effect and its acknowledgement in the reference design, and the fault that
probes it (none of them needs the submission's cooperation: crash points fall back to a plain
SIGKILL after a bound):

  client -> API            idempotency keys kept across a SIGKILL + restart, replayed answers
                           (Kill order_api, then acknowledged requests sent again)
  API -> broker            201 (or a cancel's 200) before the broker's ack: broker Cut, API SIGKILLed
                           mid-cut with orders and cancels in flight, retries
                           lost acknowledgement: OneWayCut (stored, the producer never hears back),
                           then the client retries with its keys -> one order per key
                           two requests with one key in flight: Delay on the broker path -> 409
  broker -> consumer       offset committed before the effects (commit-first, or auto-commit in the
                           background): a hold before each database commit on fresh work (past
                           librdkafka's 5 s auto-commit interval, then SIGKILL) - BoundarySweep
  consumer -> database     effects in two transactions: a SIGKILL just after each boundary of the
                           read model's unit of work as it has them (BoundarySweep: after each
                           commit, so between any two); redelivery after the effect but before the
                           offset: the same; PostgreSQL restarted (-m immediate) and its
                           connections reset while records flow: retry, don't skip or dead-letter
  broker (redelivery)      Duplicates of existing records injected into the topic
  malformed input          Poison records: dead-lettered, the consumer goes on
"""
from __future__ import annotations

import psycopg

from ..checks.contract import check_api_contract
from ..checks.events import held, in_flight_during, retried_unknown_answered
from ..checks.orders import DOWNSTREAM, check_final_status, check_no_duplicate_effects, check_no_lost_orders
from ..checks.poison import check_poison
from ..checks.tracing import run_secret, trace_check
from ..kafka import group_lag
from ..nemesis import (BOUNDARIES, BoundarySweep, CrashPoint, Cut, Delay, Duplicates, HoldThenKill, Kill, OneWayCut,
                       ResetConnections, RestartServer)
from ..nemesis.poison import Poison
from ..observe import group_lag_is_zero, observe_rows, quiesce, rows_stable
from ..runner import Run
from ..scenario import At, Check, Params, Phase, PhaseContext, Scenario, play
from ..workloads.contract import probe_basics, probe_concurrent_key, probe_replay_after_restart
from ..workloads.orders import Orders, cancellable, order_metrics, orders_of, steady
from ..workloads.poison import poison_phase
from ..workloads.tracing import trace_phase

P = Params(orders=120, rate=30, concurrency=6, load_max_seconds=90, fallback_after=20.0, hold=7.0, sweep_seconds=60,
           cut_orders=4, cut_cancels=3, oneway_wait=12.0, delay_ms=1500, replays=5, duplicates=15,
           quiesce_timeout=60)
DOWNSTREAM_SQL = {"orders": "SELECT order_id, customer_id, amount_cents, status FROM public.orders",
                  "totals": "SELECT customer_id, order_count, total_cents FROM public.customer_totals"}


def orders(run: Run) -> Orders:
    return orders_of(run, "order_api")


def consumer_faults(run: Run) -> list[list[At]]:
    """Two schedules: the read model's crashes, and database faults that wait until the read
    model is applying records.

    The read model's boundaries as it has them (seen in a warm-up of the first orders: poll ->
    its database commits -> its offset commit), then a SIGKILL just after each (armed live, on
    fresh work: a unit that changed rows) and a hold just before each database commit (past
    librdkafka's 5 s auto-commit, then SIGKILL). A consumer that commits one record in two
    transactions gets a kill between them in every run; a correct one gets redeliveries after its
    effects; an offset committed in the background (or first) for work that never finishes is a
    loss."""
    rm = "read_model"
    return [[At(BoundarySweep(rm, hold=P.hold, fallback_after=P.fallback_after, max_seconds=P.sweep_seconds),
                after_ok=8)],
            [At(ResetConnections("postgres"), ready=consuming),  # records in flight when the database goes
             At(RestartServer("postgres", down=1.0), ready=consuming)]]


def consuming(run: Run) -> bool:
    """The read model is up and applying records (not rejoining its group, which takes ~9 s on
    Tansu): its row count grew since the last look. Judged by rows, not committed offsets, which
    a consumer committing in the background moves in steps."""
    rows = count_rows(run)
    before, run.state["rows"] = run.state.get("rows"), rows
    return run.services["read_model"].alive() and before is not None and rows > before


def count_rows(run: Run) -> int:
    with psycopg.connect(run.ns.reader_url, connect_timeout=5) as conn:
        return conn.execute("SELECT count(*) FROM public.orders").fetchone()[0]


def load(run: Run, ctx: PhaseContext) -> None:
    sent = orders(run).load(ctx, P.orders, P.rate, P.concurrency)
    orders(run).retry_unknown(run.history)  # what the client never heard about, it asks again
    acked = sum(1 for op in run.history.ops("place") if op.type == "ok")
    run.note(f"load: {sent} order plans played, {acked} place requests answered 201")


def api_faults(run: Run, ctx: PhaseContext) -> None:
    """Faults on the API's side, one after another, each followed by the client's retries. First
    the one-way cut, while the API's producer is warm from the load (a producer still starting up
    would never send its request); then a restart before acknowledged requests come again; then a
    cut with the API SIGKILLed while the requests are in flight (a 201 before the broker's ack
    shows as an acknowledged order that never arrives)."""
    with OneWayCut("kafka").active(run) as cutting:  # stored, never acknowledged: the API gives up (5xx)
        if cutting:
            sent = orders(run).burst(P.cut_orders, during="one-way-cut", after=P.oneway_wait,
                                     cancel=cancellable(run.history, P.cut_cancels, run.rng))
    if cutting:
        orders(run).retry_keys([(p.key, p.body) for p in sent])
        orders(run).retry_unknown(run.history)  # the cancels the API gave up on
    probe_replay_after_restart(run, orders(run), Kill("order_api"), P.replays)
    with Cut("kafka").active(run) as cutting:  # a 200 for a cancel the broker never had is lost with the API
        if cutting:
            sent = orders(run).burst(P.cut_orders, during="cut", cancel=cancellable(run.history, P.cut_cancels, run.rng),
                                     then=lambda: Kill("order_api", restart=False).apply(run))
    if cutting:
        run.services["order_api"].start().wait_healthy()
        orders(run).retry_keys([(p.key, p.body) for p in sent])
        orders(run).retry_unknown(run.history)
    Duplicates(run.ns.topic("orders"), P.duplicates, run.seed).apply(run)


def settle_and_observe(run: Run, ctx: PhaseContext) -> None:
    url = run.ns.reader_url
    quiesce(run.history, {"read model lag 0": group_lag_is_zero(run.kafka, run.ns.group("read-model"), run.ns.topic("orders")),
                          "read model rows stable": rows_stable(url, "SELECT count(*) FROM public.orders")}, P.quiesce_timeout)
    observe_rows(run.history, DOWNSTREAM, url, DOWNSTREAM_SQL)


def poison(run: Run, ctx: PhaseContext) -> None:
    def applied(reply) -> bool:
        return run.wait_for_row("SELECT 1 FROM public.orders WHERE order_id = %s", (reply.body.get("order_id"),),
                                alive=run.services["read_model"].alive)

    poison_phase(run, run.ns.topic("orders"), run.ns.topic("orders.dlq"), "read_model",
                 lambda: orders(run).place(orders(run).key(), orders(run).body(), probe="after-poison"), applied)


def traces(run: Run, ctx: PhaseContext) -> None:
    def place():
        return orders(run).place(orders(run).key(), orders(run).body(), probe="trace")

    trace_phase(run, place, lambda reply: (reply.body or {}).get("order_id"),
                lambda order_id: run.wait_for_row("SELECT 1 FROM public.orders WHERE order_id = %s", (order_id,), timeout=0.5),
                group_lag_is_zero(run.kafka, run.ns.group("read-model"), run.ns.topic("orders")),
                run.ns.topic("orders"), stop=["order_api", "read_model"], consumer="read_model")


def start(run: Run, ctx: PhaseContext) -> None:
    # The load phase's faults are drawn now; the read model joins its group while the API starts
    # and is probed (its crash points are armed live, without a restart).
    run.state["faults"] = consumer_faults(run)
    run.services["read_model"].start()
    run.services["order_api"].start().wait_healthy()
    probe_basics(orders(run))
    probe_concurrent_key(run, orders(run), Delay("kafka", P.delay_ms))


SCENARIO = Scenario(
    params=P,
    phases=[Phase("start and probe the API contract", start, injects=(Delay.kind,), always=True),
            Phase("load under consumer crashes and database faults", load, lambda run: run.state["faults"],
                  P.load_max_seconds, injects=(BOUNDARIES, BoundarySweep.kind, CrashPoint.kind, HoldThenKill.kind,
                                               ResetConnections.kind, RestartServer.kind)),
            Phase("API restarts, broker cuts, lost acknowledgements, duplicates", api_faults,
                  injects=(OneWayCut.kind, Kill.kind, Cut.kind, Duplicates.kind)),
            Phase("quiesce and observe", settle_and_observe, always=True),
            Phase("poison records", poison, injects=(Poison.kind,)),
            Phase("traces: traced orders, a redelivery, SIGTERM flush", traces, injects=(Duplicates.kind,),
                  serves=("traces",))],
    checks={
        "api-contract": Check(check_api_contract, needs=[(Delay.kind, "kafka"), (Kill.kind, "order_api")],
                              events=[retried_unknown_answered]),
        "no-lost-orders": Check(check_no_lost_orders, needs=[
            (BOUNDARIES, "read_model"), (CrashPoint.kind, "read_model"), (HoldThenKill.kind, "read_model"),
            (Cut.kind, "kafka"), (RestartServer.kind, "postgres")], events=[
            held(HoldThenKill.kind, "read_model"),
            in_flight_during("place", (Cut.kind,), "kafka", "order"),
            in_flight_during("cancel", (Cut.kind,), "kafka", "cancel")]),
        "no-duplicate-effects": Check(check_no_duplicate_effects, needs=[
            (CrashPoint.kind, "read_model"), (OneWayCut.kind, "kafka"), (Duplicates.kind, None)],
            events=[retried_unknown_answered]),
        "ordering": Check(check_final_status, needs=[(CrashPoint.kind, "read_model"), (Duplicates.kind, None)]),
        "poison-message": Check(check_poison, needs=[(Poison.kind, None)]),
        "traces": Check(trace_check("order_api", "order_api", "read_model", run_secret),
                        needs=[(Duplicates.kind, None), (Poison.kind, None)]),
    })


def run(run: Run) -> None:
    play(SCENARIO, run)


# --- live mode (`make lab-1`): steady traffic and what to show -------------------------------

def traffic(run: Run, stop, rate: float = 10.0) -> None:
    steady(orders(run), stop, rate)


def metrics(run: Run, elapsed: float) -> dict[str, str]:
    shown = order_metrics(run.history, elapsed)
    try:
        shown["consumer lag"] = str(group_lag(run.kafka, run.ns.group("read-model"), run.ns.topic("orders"), timeout=2))
        shown["orders in read model"] = str(count_rows(run))
    except Exception as e:  # the view must survive a broker or database hiccup
        shown["read model"] = f"not readable yet ({type(e).__name__})"
    return shown
