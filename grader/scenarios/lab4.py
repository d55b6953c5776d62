"""Lab 4: a payments API publishing to RabbitMQ, a worker charging each payment once.

Every gap between an effect and its acknowledgement in the reference design, and the fault that
probes it (crash points fall back to a plain SIGKILL after a bound):

  client -> API -> broker   the API answers 202 only after the broker's confirm: a Cut of the
                            services' connections to RabbitMQ mid-publish, a ResetConnections, and
                            the broker SIGKILLed and restarted with its data (RestartServer: durable
                            quorum queues keep what was confirmed); the queue unbound from its
                            exchange for a while (Unroutable: mandatory + returns, or silent loss);
                            every request whose outcome the client never learned is sent again
  broker -> worker          SIGKILL just after each boundary of the worker's unit of work as it has
                            them (BoundarySweep): after the gateway call (charged there, not here:
                            redelivered, must not charge again), after the charge's commit (not
                            acked), after the ack (acked = charged?); a hold at the ack, then SIGKILL
  worker -> PostgreSQL      a hold just before the charge's commit, then SIGKILL (an auto-acked or
                            early-acked delivery is gone for good)
  worker -> gateway         the grader's gateway answers 503 k times (retry with growing delays,
                            timed by the grader), 422 for poison payments (dead-letter queue),
                            and holds some answers longer than two heartbeat intervals (a job
                            that must not cost the connection); a prefetch bound sampled from the
                            broker throughout
"""
from __future__ import annotations

import threading

import psycopg

from ..checks.payments import (CHARGES, check_heartbeats, check_no_double_charge, check_no_lost_payment,
                               check_poison_to_dlq, check_prefetch, check_retry_backoff, queue_trace_check)
from ..checks.tracing import run_secret
from ..history import History
from ..launch import ServiceFailed
from ..nemesis import BoundarySweep, CrashPoint, Cut, HoldThenKill, ResetConnections, RestartServer
from ..nemesis.amqp import Unroutable
from ..observe import quiesce
from ..observe.amqp import (channel_sampler, observe_broker_log, observe_channels, observe_connections,
                            observe_consumers, observe_dlq, observe_queues, queue_depths)
from ..runner import Run
from ..scenario import At, Check, Params, Phase, PhaseContext, Scenario, play
from ..wait import WaitTimeout, wait_until
from ..workloads.gateway import Gateway, Plan
from ..workloads.payments import Payments, accepted, payments_of, plans

P = Params(payments=160, rate=20, concurrency=5, load_max_seconds=70, fallback_after=10.0, hold=2.0, cut=3.0,
           sweep_seconds=45,
           unroutable=3.0, heartbeat=2, slow=8.0, retries=(1.0, 2.0, 4.0), max_attempts=4, prefetch=8,
           quiesce_timeout=25, quiet_timeout=30)
API, WORKER = "payments_api", "payment_worker"


def q(run: Run, name: str) -> str:
    return run.ns.queue(name)


def work_queue_of(history: History) -> str:
    for e in history.events("note"):
        if "work_queue" in e.data:
            return e.data["work_queue"]
    return ""


def gateway(run: Run) -> Gateway:
    return run.state["gateway"]


def payments(run: Run) -> Payments:
    return payments_of(run, API, run.state.get("gateway"))


def with_heartbeat(url: str, seconds: int) -> str:
    return f"{url}{'&' if '?' in url else '?'}heartbeat={seconds}"


def prepare_services(run: Run) -> None:
    """The grader's gateway and a short heartbeat, in the services' env before they start."""
    if "gateway" not in run.state:
        run.state["gateway"] = Gateway(run.history).start()
    env = run.services[WORKER].env  # one dict for every service of the run
    env["PAYMENT_GATEWAY_URL"] = gateway(run).url
    if "heartbeat=" not in env.get("AMQP_URL", ""):
        env["AMQP_URL"] = with_heartbeat(env["AMQP_URL"], P.heartbeat)


def consuming(run: Run) -> bool:
    with psycopg.connect(run.ns.reader_url, connect_timeout=5):
        pass
    from ..observe.amqp import _connection
    with _connection(run) as conn:
        return conn.channel().queue_declare(q(run, "payments.work"), passive=True).method.consumer_count > 0


def start(run: Run, ctx: PhaseContext) -> None:
    prepare_services(run)
    run.history.record("note", "grader", message=f"work queue {q(run, 'payments.work')}",
                       work_queue=q(run, "payments.work"))
    run.services[WORKER].start()
    try:
        wait_until(lambda: consuming(run), 30, "the worker consuming payments.work", ignore=(Exception,))
    except WaitTimeout as e:
        raise ServiceFailed(f"{WORKER} never consumed {q(run, 'payments.work')}: {e}\n--- log tail ---\n"
                            f"{run.services[WORKER].log_tail()}") from None
    run.services[API].start().wait_healthy()


def faults(run: Run) -> list[list[At]]:
    """Two schedules: the worker's crashes; the broker's faults."""
    fb = P.fallback_after
    # the worker swept: a SIGKILL just after each boundary of its unit of work as it has them (the
    # gateway call, the charge's commit, the ack, a retry's publish) and a hold before its commit
    # and its ack, each on fresh work
    worker = [At(BoundarySweep(WORKER, hold=P.hold, fallback_after=fb, max_seconds=P.sweep_seconds, max_ordinal=1,
                               hold_before=("db-commit", "amqp-ack")), after_ok=15)]
    broker = [At(Cut("rabbitmq", seconds=P.cut), after_ok=25),
              At(Unroutable(run.ns.queue("payments"), q(run, "payments.work"), "payment", seconds=P.unroutable)),
              At(ResetConnections("rabbitmq")),
              At(RestartServer("rabbitmq", mode="immediate"), after_s=12)]
    return [worker, broker]


def load(run: Run, ctx: PhaseContext) -> None:
    sent = payments(run).load(ctx, P.payments, P.rate, P.concurrency,
                              special=[("poison", Plan(poison=True))] * 3)
    payments(run).retry_unknown(run.history)
    run.note(f"load: {sent} payments sent")


def settled(run: Run) -> bool:
    """Every accepted payment charged (or, if poison, dead-lettered), and no retry waiting."""
    poison = {p for p, plan in plans(run.history).items() if plan.get("poison")}
    wanted = set(accepted(run.history))
    with psycopg.connect(run.ns.reader_url, connect_timeout=5) as conn:
        charged = {r[0] for r in conn.execute("SELECT payment_id FROM public.charges")}
    depths = queue_depths(run, [q(run, f"payments.retry.{n}") for n in (1, 2, 3)] + [q(run, "payments.dead")])
    dead = depths.pop(q(run, "payments.dead")) or 0
    return (wanted - poison) <= charged and dead >= len(poison & wanted) and not any(depths.values())


def settle(run: Run, ctx: PhaseContext) -> None:
    quiesce(run.history, {"accepted payments charged or dead-lettered": lambda: settled(run)}, P.quiesce_timeout)


def quiet(run: Run, ctx: PhaseContext) -> None:
    """No faults: retried payments (timed gaps), long jobs, a poison one, traced payments."""
    pay = payments(run)
    # the worker's connection as its long jobs start: whose log lines to read, and its heartbeat
    # (sampled now, not by chance: a blocked connection may live less than a sampling interval)
    for what in (observe_channels, observe_connections):
        try:
            what(run, run.history, timeout=60)
        except Exception:  # the checks say what they could not read
            pass
    todo = [("p", None)] * 3 + [("retry", Plan(fail_first=2))] * 2 + [("poison", Plan(poison=True))] + \
           [("long", Plan(slow=P.slow))] * 2
    threads = [threading.Thread(target=pay.send, args=(tag, plan), kwargs={"probe": "trace"}, daemon=True)
               for tag, plan in todo]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    quiesce(run.history, {"quiet payments charged or dead-lettered": lambda: settled(run)}, P.quiet_timeout)


def observe(run: Run, ctx: PhaseContext) -> None:
    try:
        with psycopg.connect(run.ns.reader_url, connect_timeout=10) as conn:
            rows = [list(r) for r in conn.execute("SELECT payment_id, amount_cents FROM public.charges")]
        run.history.observe(CHARGES, rows=rows)
    except psycopg.Error as e:
        run.history.observe(CHARGES, rows=[], error=f"{type(e).__name__}: {e}")
    observe_dlq(run, run.history, q(run, "payments.dead"))
    for what in (observe_channels, observe_consumers, observe_connections):
        try:
            what(run, run.history, timeout=60)
        except Exception:  # the samples taken during the run still count
            pass
    observe_queues(run, run.history, [q(run, n) for n in ("payments.work", "payments.retry.1", "payments.retry.2",
                                                          "payments.retry.3", "payments.dead")])
    observe_broker_log(run, run.history)
    codes = {}
    for name in (API, WORKER):  # SIGTERM: a clean shutdown must flush the spans the exporter holds
        run.services[name].stop()
        codes[name] = run.services[name].exit_code()
    run.history.observe("shutdown", services=codes)
    traced = {op.invoke["trace_id"] for op in run.history.ops("pay") if op.invoke.get("probe") == "trace"
              and op.type == "ok"}
    try:
        wait_until(lambda: traced <= {e.data.get("trace_id") for e in run.history.events("span")
                                      if e.data.get("service") == WORKER}, 15, "the worker's spans")
    except WaitTimeout:
        pass  # the traces check says what is missing
    gateway(run).stop()


WORKER_CRASHES = [(CrashPoint.kind, WORKER), (HoldThenKill.kind, WORKER)]
SCENARIO = Scenario(
    params=P,
    phases=[Phase("start the gateway, the worker, the API", start),
            Phase("load under worker crashes and broker faults", load, faults, P.load_max_seconds),
            Phase("settle", settle),
            Phase("quiet: retries, long jobs, poison, traced payments", quiet),
            Phase("observe, SIGTERM, spans", observe)],
    observers=[channel_sampler(every=4.0)],
    checks={
        "no-double-charge": Check(check_no_double_charge, needs=WORKER_CRASHES),
        "no-lost-payment": Check(check_no_lost_payment, needs=[*WORKER_CRASHES, (Cut.kind, "rabbitmq"),
                                                               (Unroutable.kind, "rabbitmq"),
                                                               (RestartServer.kind, "rabbitmq")]),
        "poison-to-dlq": Check(check_poison_to_dlq(P.max_attempts, work_queue_of)),
        "retry-backoff": Check(check_retry_backoff(P.retries)),
        "prefetch": Check(check_prefetch(P.prefetch, work_queue_of)),
        "heartbeats": Check(check_heartbeats(P.heartbeat)),
        "traces": Check(queue_trace_check(API, WORKER, run_secret)),
    })


def run(run: Run) -> None:
    play(SCENARIO, run)


# --- live mode (`make lab-4`) ------------------------------------------------------------------

def before_start(run: Run) -> None:
    """Live mode: the gateway and the heartbeat before the services start (grader/live.py)."""
    prepare_services(run)


def traffic(run: Run, stop, rate: float = 10.0) -> None:
    """Steady payments; now and then one that fails twice, a poison one, a long one."""
    pay = payments(run)
    n = 0
    while not stop.wait(1 / rate):
        n += 1
        special = {17: ("retry", Plan(fail_first=2)), 31: ("poison", Plan(poison=True)), 47: ("long", Plan(slow=P.slow))}
        tag, plan = special.get(n % 50, ("p", None))
        pay.send(tag, plan)


def channels_shown(run: Run, every: float = 5.0) -> str:
    """Unacked/prefetch per consuming channel from rabbitmqctl (an Erlang VM per call: every few s)."""
    import time

    last = run.state.get("channels_shown")
    if last is None or time.monotonic() - last[0] > every:
        try:
            channels = observe_channels(run, History()) or []
            text = ", ".join(f"{c['unacked']}/{c['prefetch']}" for c in channels if c["consumers"]) or "no consumer"
        except Exception as e:  # the broker restarting, rabbitmqctl slow
            text = f"not readable now ({type(e).__name__}; asked again every {every:g} s)"
        last = run.state["channels_shown"] = (time.monotonic(), text)
    return last[1]


def metrics(run: Run, elapsed: float) -> dict[str, str]:
    calls = run.history.observations("gateway-call")
    shown = {"payments sent": str(len(run.history.ops("pay"))),
             "accepted (2xx)": str(len(accepted(run.history))),
             "gateway calls": f"{len(calls)} ({sum(1 for c in calls if c.data['status'] == 503)} answered 503, "
                              f"{sum(1 for c in calls if c.data['status'] == 422)} refused)"}
    try:
        depths = queue_depths(run, [q(run, n) for n in ("payments.work", "payments.retry.1", "payments.retry.2",
                                                        "payments.retry.3", "payments.dead")])
        shown["work queue ready"] = str(depths[q(run, "payments.work")])
        shown["waiting to retry"] = str(sum(depths[q(run, f"payments.retry.{n}")] or 0 for n in (1, 2, 3)))
        shown["dead-letter queue"] = str(depths[q(run, "payments.dead")])
        shown["unacked/prefetch (consuming channels)"] = channels_shown(run)
        with psycopg.connect(run.ns.reader_url, connect_timeout=3) as conn:
            charged = conn.execute("SELECT count(*) FROM public.charges").fetchone()[0]
        shown["charges"] = f"{charged} ({charged / max(elapsed, 1e-9):.1f}/s)"
        approved = {c.data["payment_id"] for c in calls if c.data["status"] == 200}
        repeats = sum(1 for c in calls if c.data["status"] == 200) - len(approved)
        shown["duplicates absorbed (repeated gateway approvals, one charge)"] = str(repeats)
    except Exception as e:  # the view must survive a broker restart or a table not created yet
        shown["broker"] = f"not readable yet ({type(e).__name__})"
    return shown
