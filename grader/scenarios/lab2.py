"""Lab 2: transactional outbox and change data capture from PostgreSQL.

Every gap between an effect and its acknowledgement in the reference design, and the fault that
probes it (crash points fall back to a plain SIGKILL after a bound):

  client -> order service   keys kept across a SIGKILL + restart (Kill, then acknowledged requests again);
                            two requests with one key while PostgreSQL is slow (Delay) -> 409
  order -> outbox           one transaction: the database refuses some orders at COMMIT
                            (RejectCommits) - an event published for one of them is a phantom;
                            a kill just after a commit, and a hold just before one (both odd: one
                            lands between two transactions of a service that writes them apart)
  outbox -> relay (log)     some orders' transactions take 3 s longer at COMMIT while later ones
                            commit (StallCommits, in the database): a relay polling the table by
                            id skips them for good
  relay -> Kafka -> slot    SIGKILL just after each boundary of the relay's unit of work (its first
                            send, the producer's flush: acknowledged, slot not yet advanced; the
                            slot advance) and a hold before the advance (BoundarySweep); a broker
                            Cut, once the relay publishes, longer than the delivery timeout of the
                            contract (its sends fail: nothing may be confirmed past what Kafka did
                            not take)
  PostgreSQL                CHECKPOINT (the slot's confirmed position reaches disk), then restarted
                            (-m immediate) mid-stream: the relay and projector reconnect, and a
                            relay that confirmed before the ack has lost what it confirmed
  client retries            every request whose outcome the client never learned is sent again
                            with its key: what was committed must then be acknowledged and arrive
  Kafka -> projector        SIGKILL just after its database commit and its first offset store
                            (BoundarySweep); a hold just before a commit of fresh work past the 5 s
                            auto-commit interval, then SIGKILL (offsets committed in the background
                            for work never done); Duplicates injected
"""
from __future__ import annotations

import threading

import psycopg

from ..checks.cdc import check_slot_hygiene
from ..checks.contract import check_api_contract
from ..checks.events import acknowledged_during, held, retried_unknown_answered
from ..checks.orders import (DOWNSTREAM, EVENTS, OUTBOX, check_aggregate_order, check_no_duplicate_effects,
                             check_no_phantoms, lost_around, no_lost_except)
from ..checks.poison import check_poison
from ..checks.tracing import run_secret, trace_check
from ..nemesis import BoundarySweep, CrashPoint, Cut, Delay, Duplicates, HoldThenKill, Kill, RestartServer
from ..nemesis.database import RejectCommits, StallCommits
from ..nemesis.poison import Poison
from ..history import History
from ..kafka import group_lag
from ..observe import (group_lag_is_zero, observe_rows, observe_slots, observe_topic, quiesce, rows_stable,
                       slot_sampler)
from ..runner import Run
from ..scenario import At, Check, Params, Phase, PhaseContext, Scenario, play
from ..workloads.contract import probe_basics, probe_concurrent_key, probe_replay_after_restart
from ..workloads.orders import Orders, order_metrics, orders_of, steady
from ..workloads.poison import poison_phase
from ..workloads.tracing import trace_phase

P = Params(orders=120, rate=30, concurrency=6, load_max_seconds=100, fallback_after=20.0, hold=7.0, stall=3.0,
           sweep_seconds=50,
           slow=5, slow_every=2.0, broker_cut=9.0,
           delay_ms=300, replays=5, rejects=4, duplicates=15, quiesce_timeout=60)
DELIVERY_TIMEOUT_S = 5.0  # lab.toml's RELAY_DELIVERY_TIMEOUT_MS: the broker cut outlasts it
REJECT = "reject-"  # customers whose orders the database refuses at COMMIT
SLOW = "slow-"  # customers whose orders the database commits 3 s late
DOWNSTREAM_SQL = {"orders": "SELECT order_id, customer_id, amount_cents, status FROM read_model.orders",
                  "totals": "SELECT customer_id, order_count, total_cents FROM read_model.customer_totals"}


def orders(run: Run) -> Orders:
    return orders_of(run, "order_service")


def topic(run: Run) -> str:
    return run.ns.topic("outbox.event.order")


def settled(run: Run):
    return group_lag_is_zero(run.kafka, run.ns.group("projector"), topic(run))


def database_restarted(run: Run) -> bool:
    return any(e.data.get("fault") == RestartServer.kind and e.data.get("phase") == "end"
               for e in run.history.events("fault"))


def faults(run: Run) -> list[list[At]]:
    """Two schedules, drawn from the seed: the relay's crashes; the service, database and projector.

    The relay and the projector are swept (BoundarySweep): a SIGKILL just after each boundary of
    their unit of work as they have them - the relay's first send, its flush, its confirm; the
    projector's commit and its first offset store - and a hold before the relay's confirm. Each
    fault on fresh work; the broker cut once the relay is publishing again."""
    rng, fb = run.rng, P.fallback_after
    # The database restart must be over before the relay's confirms are probed (the sweep waits
    # for it): a crash can put the slot back (a CHECKPOINT saves its confirmed position only if its
    # restart point moved too), and the re-send would hide a relay that confirmed too early.
    relay = [At(BoundarySweep("cdc_relay", hold=P.hold, fallback_after=fb, max_seconds=P.sweep_seconds,
                              max_ordinal=1, hold_before=("slot-advance",)),
                after_ok=10, ready=database_restarted, ready_within=60),
             At(Cut("kafka", seconds=P.broker_cut), ready=relay_publishing, ready_within=30)]
    odd, odd2 = 2 * rng.randrange(10, 25) + 1, 2 * rng.randrange(10, 25) + 1
    # The database restart comes after the order service's faults, whose odd commit counts
    # (between an order's transaction and a separate outbox one) a restart's failed commits would shift.
    others = [At(CrashPoint("order_service", "db-commit", "after", odd, fallback_after=fb), after_ok=5),
              At(HoldThenKill("order_service", "db-commit", odd2, hold=1.0, fallback_after=fb)),
              At(RestartServer("postgres", down=1.0, checkpoint_url=run.stack.url("postgres"))),
              # held before a commit by projector_hold (its own schedule): the sweep waits until that is over
              At(BoundarySweep("projector", fallback_after=fb, max_seconds=P.sweep_seconds, max_ordinal=1,
                               hold_before=()))]
    return [relay, others]


def relay_publishing(run: Run) -> bool:
    """The relay is up and publishing fresh work (not starting up after a restart, which takes
    seconds): the slot's confirmed position moved since the last look. A broker cut that starts
    then meets its sends, and outlasts its delivery timeout (lab.toml: RELAY_DELIVERY_TIMEOUT_MS),
    so a relay that confirms past failed sends loses them."""
    with psycopg.connect(run.ns.reader_url, connect_timeout=5) as conn:
        confirmed = conn.execute("SELECT max(confirmed_flush_lsn)::text FROM pg_replication_slots "
                                 "WHERE database = current_database()").fetchone()[0]
    before, run.state["confirmed"] = run.state.get("confirmed"), confirmed
    return run.services["cdc_relay"].alive() and before is not None and confirmed != before


def projector_hold(run: Run) -> list[At]:
    """The projector held just before a commit of fresh work past librdkafka's 5 s auto-commit
    interval, then SIGKILLed: offsets stored at poll (enable.auto.offset.store's default) are
    committed in the background for records whose transaction never commits - a loss. Early in the
    load, far from the broker cut (a cut during the hold stops the background commit too), counted
    from past the rejoin; the projector's crash point waits for it (one fault on a service at a time)."""
    return [At(HoldThenKill("projector", "db-commit", run.rng.randrange(1, 4), hold=P.hold,
                            fallback_after=P.fallback_after, after_s=run.rng.uniform(4, 6), writes_only=True),
               after_ok=5)]


def after_projector_hold(schedules: list[list[At]]) -> list[list[At]]:
    """The other schedules' projector faults wait until the hold is over."""
    def hold_over(run: Run) -> bool:
        return any(e.data.get("fault") == HoldThenKill.kind and e.data.get("target") == "projector"
                   and e.data.get("phase") == "end" for e in run.history.events("fault"))

    for steps in schedules:
        for step in steps:
            if step.fault.target == "projector" and step.ready is None:
                step.ready, step.ready_within = hold_over, 60
    return schedules


def start(run: Run, ctx: PhaseContext) -> None:
    run.services["cdc_relay"].start()
    run.services["projector"].start()
    run.services["order_service"].start().wait_healthy()  # it creates the tables and the slot
    RejectCommits(run.ns.owner_url, "orders", "customer_id", REJECT).apply(run)
    StallCommits(run.ns.owner_url, "orders", "customer_id", SLOW, P.stall).apply(run)
    probe_basics(orders(run))
    probe_concurrent_key(run, orders(run), Delay("postgres", P.delay_ms))
    for n in range(P.rejects):
        orders(run).place(orders(run).key(), {"customer_id": f"{REJECT}{n}", "amount_cents": 100 + n}, probe="reject")


def load(run: Run, ctx: PhaseContext) -> None:
    slow = threading.Thread(target=slow_orders, args=(run, ctx), daemon=True)
    slow.start()
    sent = orders(run).load(ctx, P.orders, P.rate, P.concurrency)
    slow.join(60)
    orders(run).retry_unknown(run.history)
    run.note(f"load: {sent} order plans played")
    wal_mark(run)


def slow_orders(run: Run, ctx: PhaseContext) -> None:
    """Orders whose commit the database delays (StallCommits) while the load commits around them."""
    for n in range(P.slow):
        if ctx.nemesis.stopped.wait(P.slow_every):
            return
        orders(run).place(orders(run).key(), {"customer_id": f"{SLOW}{n}", "amount_cents": 100 + n}, probe="slow")


def wal_mark(run: Run) -> None:
    """Where the WAL was once the last order was acknowledged: the slot must get past it."""
    with psycopg.connect(run.ns.reader_url, connect_timeout=10) as conn:
        mark = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
    run.history.observe("wal-mark", lsn=mark, t=run.history.elapsed())


def more_faults(run: Run, ctx: PhaseContext) -> None:
    probe_replay_after_restart(run, orders(run), Kill("order_service"), P.replays)
    Duplicates(topic(run), P.duplicates, run.seed).apply(run)


def settle_and_observe(run: Run, ctx: PhaseContext) -> None:
    url = run.ns.reader_url
    quiesce(run.history, {"projector lag 0": settled(run),
                          "downstream rows stable": rows_stable(url, "SELECT count(*) FROM read_model.orders")},
            P.quiesce_timeout)
    observe_rows(run.history, DOWNSTREAM, url, DOWNSTREAM_SQL)
    observe_topic(run.history, EVENTS, run.kafka, topic(run))
    observe_rows(run.history, OUTBOX, url, {"rows": "SELECT aggregateid, payload::text FROM public.outbox"})


def poison(run: Run, ctx: PhaseContext) -> None:
    def applied(reply) -> bool:
        return run.wait_for_row("SELECT 1 FROM read_model.orders WHERE order_id = %s", (reply.body.get("order_id"),),
                                alive=run.services["projector"].alive)

    poison_phase(run, topic(run), f"{topic(run)}.dlq", "projector",
                 lambda: orders(run).place(orders(run).key(), orders(run).body(), probe="after-poison"), applied)


def traces(run: Run, ctx: PhaseContext) -> None:
    trace_phase(run, lambda: orders(run).place(orders(run).key(), orders(run).body(), probe="trace"),
                lambda reply: (reply.body or {}).get("order_id"),
                lambda order_id: run.wait_for_row("SELECT 1 FROM read_model.orders WHERE order_id = %s", (order_id,),
                                                  timeout=0.5),
                settled(run), topic(run), stop=["order_service", "cdc_relay", "projector"], consumer="projector")


RELAY_CRASHES = [(CrashPoint.kind, "cdc_relay"), (HoldThenKill.kind, "cdc_relay")]
# Each loss fails one check: the relay's around its crashes, the relay's or projector's around the
# database restart, every other one (the order service's, the projector's, the relay's elsewhere) here.
RELAY_LOSSES = (tuple(RELAY_CRASHES), ("relay",))
RESTART_LOSSES = (((RestartServer.kind, "postgres"),), ("relay", "projector"))
SCENARIO = Scenario(
    params=P,
    phases=[Phase("start, refuse some commits, probe the API contract", start,
                  injects=(RejectCommits.kind, StallCommits.kind, Delay.kind), always=True),
            Phase("load under relay, service, projector and database faults", load,
                  lambda run: [*after_projector_hold(faults(run)), projector_hold(run)], P.load_max_seconds,
                  injects=(BoundarySweep.kind, CrashPoint.kind, HoldThenKill.kind, Cut.kind, RestartServer.kind)),
            Phase("API restart, duplicates", more_faults, injects=(Kill.kind, Duplicates.kind)),
            Phase("quiesce and observe", settle_and_observe, always=True),
            Phase("poison records", poison, injects=(Poison.kind,)),
            Phase("traces: traced orders, a redelivery, SIGTERM flush", traces, injects=(Duplicates.kind,),
                  serves=("traces",))],
    observers=[slot_sampler(lambda run: run.ns.reader_url)],
    checks={
        "api-contract": Check(check_api_contract, needs=[(Delay.kind, "postgres"), (Kill.kind, "order_service"),
                                                         (CrashPoint.kind, "order_service")],
                              events=[retried_unknown_answered]),
        "no-lost-events": Check(no_lost_except(RELAY_LOSSES, RESTART_LOSSES), needs=[
            *RELAY_CRASHES, (StallCommits.kind, "orders"), (CrashPoint.kind, "order_service"), (Cut.kind, "kafka"),
            (HoldThenKill.kind, "projector")], events=[
            held(HoldThenKill.kind, "projector"),
            acknowledged_during("place", Cut.kind, "kafka", DELIVERY_TIMEOUT_S, "order")]),
        "no-phantom-events": Check(check_no_phantoms, needs=[(RejectCommits.kind, "orders")]),
        "no-duplicate-effects": Check(check_no_duplicate_effects, needs=[*RELAY_CRASHES, (CrashPoint.kind, "projector"),
                                                                         (Duplicates.kind, None)]),
        "per-aggregate-order": Check(check_aggregate_order, needs=RELAY_CRASHES),
        "relay-crash-safety": Check(lost_around(*RELAY_LOSSES[0], components=RELAY_LOSSES[1]), needs=RELAY_CRASHES),
        "database-restart": Check(lost_around(*RESTART_LOSSES[0], components=RESTART_LOSSES[1], unless=(RELAY_LOSSES,)),
                                  needs=[(RestartServer.kind, "postgres")]),
        "slot-hygiene": Check(check_slot_hygiene, needs=RELAY_CRASHES),
        "poison-message": Check(lambda history, **args: check_poison(history, consumer="projector", **args),
                                needs=[(Poison.kind, None)]),
        "traces": Check(trace_check("order_service", "cdc_relay", "projector", run_secret),
                        needs=[(Duplicates.kind, None), (Poison.kind, None)]),
    })


def run(run: Run) -> None:
    play(SCENARIO, run)


# --- live mode (`make lab-2`): steady traffic and what to show -------------------------------

def traffic(run: Run, stop, rate: float = 10.0) -> None:
    steady(orders(run), stop, rate)


def metrics(run: Run, elapsed: float) -> dict[str, str]:
    """The live view's numbers (the latest trace is drawn by grader/live.py for every lab)."""
    shown = order_metrics(run.history, elapsed)
    try:
        with psycopg.connect(run.ns.reader_url, connect_timeout=3) as conn:
            shown["outbox rows"] = str(conn.execute("SELECT count(*) FROM public.outbox").fetchone()[0])
            shown["orders downstream"] = str(conn.execute("SELECT count(*) FROM read_model.orders").fetchone()[0])
        for slot in observe_slots(History(), run.ns.reader_url):
            shown[f"slot {slot['slot']}"] = (f"{slot['lag_bytes']} bytes unconfirmed, {slot['retained_bytes']} bytes "
                                             f"of WAL retained")
        shown["projector lag"] = str(group_lag(run.kafka, run.ns.group("projector"), topic(run), timeout=2))
    except Exception as e:  # the view must survive a restart or a table not created yet
        shown["downstream"] = f"not readable yet ({type(e).__name__})"
    return shown
