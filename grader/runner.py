"""One graded run of a lab: stack up, services launched, the lab's scenario played, checks judged.

The scenario (grader/scenarios/<lab>.py, a `SCENARIO` of phases and checks) owns the workload, the
faults and which checkers to call; this module owns everything around it that is the same for
every lab. Verdicts are computed from the history as saved to history.jsonl, so `labkit recheck`
on the same folder gives the same verdicts by construction.
"""
from __future__ import annotations

import importlib
import json
import random
import secrets
import shutil
import tempfile
import time
import traceback
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import psycopg

from .checks import CheckResult
from .history import History
from .kafka import ensure_topics
from .lab import Lab
from .launch import Service, ServiceFailed, launch_services
from .nemesis.boundaries import coverage
from .nemesis.proxy import TcpProxy
from .otlp import OtlpReceiver
from .report import RunReport
from .scenario import fault_summary, judge, only_of
from .stack import Namespace, Stack, StackError, make_stack
from .stack.procs import free_port
from .supervisor import Supervisor
from .untrusted import copy_tree, links_out
from .wait import WaitTimeout, wait_until
from .workloads.http import HttpWorkload

PROXIED = ("postgres", "redis", "rabbitmq")  # besides Kafka, whose broker must advertise the proxy
# Graded runs: the services' span exporter waits longer than a run, so the spans of their last
# life arrive only if a SIGTERM flushes them (the trace phase checks it). Live runs: at once.
SPAN_DELAY_MS = 120_000
LIVE_SPAN_DELAY_MS = 200


def new_seed() -> int:
    """64 bits from the OS: a seed cannot be guessed from what a run shows."""
    return secrets.randbits(64)


@dataclass
class Run:
    """Everything a scenario needs, in one place (also the nemesis' Target)."""

    lab: Lab
    submission: Path
    seed: int
    stack: Stack
    ns: Namespace
    services: dict[str, Service]
    out_dir: Path
    proxies: dict[str, TcpProxy] = field(default_factory=dict)  # kind -> fault proxy the services go through
    history: History = field(default_factory=History)
    notes: list[str] = field(default_factory=list)
    say: Callable[[str], None] = lambda message: None
    state: dict[str, Any] = field(default_factory=dict)  # the scenario's own objects (clients, workloads)
    only: tuple[str, ...] = ()  # `labkit check --only`: play just what these checks need

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.secret = f"lk-{random.Random(self.seed ^ 0x5EC2E7).getrandbits(96):024x}"  # must never reach a span
        self._clients: list[HttpWorkload] = []

    @property
    def kafka(self) -> str:
        """Bootstrap address of the broker (the advertised listener is the proxy's, if there is one)."""
        if "kafka" in self.proxies:
            return f"127.0.0.1:{self.proxies['kafka'].port}"
        return self.stack.url("kafka")

    def client(self, service: str) -> HttpWorkload:
        """The grader's HTTP client for a service, closed when the run ends."""
        client = HttpWorkload(self.services[service].base_url, self.history, seed=self.seed, secret=self.secret)
        self._clients.append(client)
        return client

    def note(self, message: str) -> None:
        self.notes.append(message)
        self.history.record("note", "grader", message=message)
        self.say(message)

    def wait_for_row(self, sql: str, params: tuple, alive: Callable[[], bool] = lambda: True,
                     timeout: float = 30) -> bool:
        """True once `sql` returns a row in the run's database (the grader's reader: name the schema,
        `public.orders`), False after
        `timeout` or as soon as `alive()` says the service that should write it is gone."""
        def found() -> bool:
            if not alive():
                raise WaitTimeout("the service is down")
            with psycopg.connect(self.ns.reader_url, connect_timeout=5) as conn:
                return conn.execute(sql, params).fetchone() is not None

        try:
            return wait_until(found, timeout, "a row", ignore=(psycopg.Error,))
        except WaitTimeout:
            return False

    def close(self) -> None:
        for client in self._clients:
            client.close()


def _start_stack(lab: Lab, runtime: str, say: Callable[[str], None], learner: bool) -> tuple[Stack, int | None]:
    stack = make_stack(lab.infra, runtime, lab_id=lab.id, learner=learner)
    proxy_port = None
    kafka = stack.servers.get("kafka")
    if kafka is not None and hasattr(kafka, "advertised_port"):
        proxy_port = free_port()
        kafka.advertised_port = proxy_port  # every Kafka client then goes through the fault proxy
    say(f"starting {', '.join(lab.infra)} ({stack.runtime})")
    stack.start()
    return stack, proxy_port


def _proxied_url(url: str, port: int) -> str:
    """The same URL with host:port replaced by the proxy's (credentials and path kept)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    auth = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{auth}127.0.0.1:{port}"))


def prepare(lab: Lab, submission: Path, runtime: str, seed: int, out_dir: Path, resources: ExitStack,
            say: Callable[[str], None] = lambda m: None, learner: bool = False, stack: Stack | None = None,
            span_delay_ms: int = SPAN_DELAY_MS, isolated: bool = False, expose: tuple[str, ...] = ()) -> Run:
    """Stack, proxies, namespace, topics and (not yet started) services; cleanup goes on `resources`.
    `learner`: a live run (`make lab-N`), where auto on Docker means Compose. `stack`: an already
    running stack to share (then the broker has no proxy: faults that need one are SKIP)."""
    out_dir = out_dir.resolve()  # services run in the submission folder: every path we hand them is absolute
    out_dir.mkdir(parents=True, exist_ok=True)
    proxy_port = None
    if stack is None:
        stack, proxy_port = _start_stack(lab, runtime, say, learner)
        resources.callback(stack.stop)
    proxies: dict[str, TcpProxy] = {}
    if proxy_port is not None:
        proxies["kafka"] = TcpProxy("127.0.0.1", stack.servers["kafka"].port, listen_port=proxy_port).start()
    if stack.runtime in ("native", "docker"):  # local servers: a proxy in front of each one
        for kind in PROXIED:
            if kind in stack.servers:
                proxies[kind] = TcpProxy("127.0.0.1", stack.servers[kind].port).start()
    for proxy in proxies.values():
        resources.callback(proxy.stop)
    ns = stack.namespace(prefix=lab.id.replace("-", ""))
    resources.callback(_quietly, ns.drop)
    env = ns.env()
    if "kafka" in proxies:
        env["KAFKA_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{proxies['kafka'].port}"
    for kind, var in (("postgres", "DATABASE_URL"), ("redis", "REDIS_URL"), ("rabbitmq", "AMQP_URL")):
        if kind in proxies and var in env:
            env[var] = _proxied_url(env[var], proxies[kind].port)
    if "kafka" in stack.servers and lab.topics:
        ensure_topics(env["KAFKA_BOOTSTRAP_SERVERS"], {ns.topic(t.name): t.partitions for t in lab.topics})
    history = History()
    # the services' spans go into the history; OTLP/HTTP only: no gRPC threads in a process that forks
    receiver = OtlpReceiver(history, grpc=False).start()
    resources.callback(receiver.stop)
    env.update(receiver.env(schedule_delay_ms=span_delay_ms))
    box, graded = None, submission
    if isolated:  # untrusted code: own uid, namespaces, limits (grader/sandbox); closed after the services
        from .sandbox import Sandbox

        box = resources.enter_context(Sandbox(submission, expose=expose))
        left_out = box.notes  # its private copy holds no link out of the submission
    else:
        left_out = links_out(submission)
        if left_out:  # never run code through a link out of the submission: run a copy without them
            graded = Path(tempfile.mkdtemp(prefix="labkit-submission-")) / "submission"
            resources.callback(shutil.rmtree, graded.parent, True)
            left_out = copy_tree(submission, graded)
    services = launch_services(lab.services, graded, env, out_dir / "logs", sandbox=box)
    for service in services.values():
        resources.callback(service.stop)
    run = Run(lab, submission, seed, stack, ns, services, out_dir, proxies, history=history, say=say)
    history.record("note", "grader", message=f"seed {seed}", seed=seed, lab=lab.id, secret=run.secret,
                   wall_t0_ns=time.time_ns() - int(history.elapsed() * 1e9))
    for note in left_out:
        run.note(note)
    resources.callback(run.close)
    resources.callback(Supervisor(run).start().stop)  # stops first: services are then stopped for good
    return run


def _quietly(cleanup: Callable[[], None]) -> None:
    try:
        cleanup()
    except Exception:  # cleanup of a run must never hide its verdicts
        pass


def scenario_of(lab: Lab):
    return importlib.import_module(lab.scenario).SCENARIO


def grade(lab: Lab, submission: Path, runtime: str = "auto", seed: int | None = None,
          out_dir: Path | None = None, say: Callable[[str], None] = lambda m: None,
          stack: Stack | None = None, isolated: bool = False, expose: tuple[str, ...] = (),
          only: tuple[str, ...] = ()) -> RunReport:
    """Play the lab's scenario against a submission and judge it. Never raises for learner bugs.
    `isolated`: run the submission in the sandbox (`labkit grade`); `expose`: reference packages
    it may import there (only the kit's own mutants, which reuse the reference). `only`: check ids
    to judge, playing only the phases they need (grader.scenario.select)."""
    seed = seed if seed is not None else new_seed()
    out_dir = (out_dir or Path("results") / lab.id).resolve()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.monotonic()
    run: Run | None = None
    failure = ""
    say(f"seed {seed} (replay with --seed {seed})")
    with ExitStack() as resources:
        try:
            run = prepare(lab, submission, runtime, seed, out_dir, resources, say, stack=stack, isolated=isolated,
                          expose=expose)
            run.only = tuple(only)
            importlib.import_module(lab.scenario).run(run)
        except ServiceFailed as e:
            failure = f"a service failed: {e}"
        except StackError as e:
            failure = f"the infrastructure failed (not your code): {e}"
        except Exception as e:  # a bug of the grader's own: report it, keep the traceback, never crash
            (out_dir / "grader-error.txt").write_text(traceback.format_exc())
            failure = (f"the grader itself failed ({type(e).__name__}: {e}); not your code - please report it "
                       f"with {out_dir / 'grader-error.txt'}")
        finally:
            if run is not None:
                if failure:
                    run.history.record("note", "grader", message=failure, failure=True)
                run.history.dump_jsonl(out_dir / "history.jsonl")
    (out_dir / "run.json").write_text(json.dumps({"lab": lab.id, "submission": str(submission), "seed": seed,
                                                   "runtime": run.stack.runtime if run else runtime, "started_at": started,
                                                   "duration": time.monotonic() - t0, "failure": failure}))
    history = History.load_jsonl(out_dir / "history.jsonl") if run is not None else History()
    report = report_from_history(lab, history, submission, seed, run.stack.runtime if run else runtime, started,
                                 time.monotonic() - t0, failure)
    if run is not None:
        report.logs = {name: s.log_tail(200) for name, s in run.services.items()}  # room to drop client noise
        report.crashed = [name for name, s in run.services.items() if s.died_on_its_own]
    return report


def report_from_history(lab: Lab, history: History, submission: Path | str, seed: int, runtime: str,
                        started: str, duration: float, failure: str = "") -> RunReport:
    """The verdicts of every check, from the history alone (what `labkit recheck` calls too)."""
    results = judge(lab, scenario_of(lab), history)
    if failure:  # checks that could not be judged say why the run stopped
        reason = failure.splitlines()[0]
        results = [CheckResult.error(r.id, r.title, r.max_points, reason, r.hint) if r.errored or r.skipped else r
                   for r in results]
    notes = [e.data["message"] for e in history.events("note") if e.data.get("message") and not e.data.get("phase")
             and not str(e.data["message"]).startswith("seed ")]
    return RunReport(lab=lab.id, title=lab.title, submission=str(submission), seed=seed, runtime=runtime,
                     started_at=started, duration=duration, results=results, notes=notes,
                     faults=fault_summary(history), only=only_of(history), coverage=coverage(history))
