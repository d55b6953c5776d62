"""One graded run of a lab: stack up, services launched, the lab's scenario played, checks judged.

The scenario (grader/scenarios/<lab>.py) owns the workload, the faults and which checkers to call;
this module owns everything around it that is the same for every lab.
"""
from __future__ import annotations

import importlib
import random
import time
import traceback
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from .checks import CheckResult
from .nemesis.proxy import TcpProxy
from .history import History
from .kafka import ensure_topics
from .lab import Lab
from .launch import Service, ServiceFailed, launch_services
from .report import RunReport
from .stack import Namespace, Stack, StackError, make_stack
from .stack.procs import free_port


@dataclass
class Run:
    """Everything a scenario needs, in one place."""

    lab: Lab
    submission: Path
    seed: int
    stack: Stack
    ns: Namespace
    services: dict[str, Service]
    out_dir: Path
    kafka_proxy: TcpProxy | None = None
    history: History = field(default_factory=History)
    notes: list[str] = field(default_factory=list)
    say: Callable[[str], None] = lambda message: None

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    @property
    def kafka(self) -> str:
        """Bootstrap address services and the grader use (through the fault proxy if there is one)."""
        if self.kafka_proxy:
            return f"127.0.0.1:{self.kafka_proxy.port}"
        return self.stack.url("kafka")

    def note(self, message: str) -> None:
        self.notes.append(message)
        self.history.record("note", "grader", message=message)
        self.say(message)

    def spec_args(self, check_id: str) -> dict:
        """id, title, max_points and hint of a check as lab.toml declares them."""
        spec = self.lab.check(check_id)
        return {"id": spec.id, "title": spec.title or spec.id, "max_points": spec.points, "hint": spec.hint or None}


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


def prepare(lab: Lab, submission: Path, runtime: str, seed: int, out_dir: Path, resources: ExitStack,
            say: Callable[[str], None] = lambda m: None, learner: bool = False) -> Run:
    """Stack, proxy, namespace, topics and (not yet started) services; cleanup goes on `resources`.
    `learner`: a live run (`make lab-N`), where auto on Docker means Compose."""
    out_dir = out_dir.resolve()  # services run in the submission folder: every path we hand them is absolute
    out_dir.mkdir(parents=True, exist_ok=True)
    stack, proxy_port = _start_stack(lab, runtime, say, learner)
    resources.callback(stack.stop)
    proxy = None
    if proxy_port is not None:
        kafka = stack.servers["kafka"]
        proxy = TcpProxy("127.0.0.1", kafka.port, listen_port=proxy_port).start()
        resources.callback(proxy.stop)
    ns = stack.namespace(prefix=lab.id.replace("-", ""))
    env = ns.env()
    if proxy is not None:
        env["KAFKA_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{proxy.port}"
    if "kafka" in stack.servers and lab.topics:
        ensure_topics(env["KAFKA_BOOTSTRAP_SERVERS"], {ns.topic(t.name): t.partitions for t in lab.topics})
    services = launch_services(lab.services, submission, env, out_dir / "logs")
    for service in services.values():
        resources.callback(service.stop)
    return Run(lab, submission, seed, stack, ns, services, out_dir, proxy, say=say)


def grade(lab: Lab, submission: Path, runtime: str = "auto", seed: int | None = None,
          out_dir: Path | None = None, say: Callable[[str], None] = lambda m: None) -> RunReport:
    """Play the lab's scenario against a submission and judge it. Never raises for learner bugs."""
    seed = seed if seed is not None else random.SystemRandom().randrange(1, 10**6)
    out_dir = out_dir or Path("results") / lab.id
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.monotonic()
    results: list[CheckResult] = []
    run: Run | None = None
    failure = ""
    with ExitStack() as resources:
        try:
            run = prepare(lab, submission, runtime, seed, out_dir, resources, say)
            scenario = importlib.import_module(lab.scenario)
            results = scenario.run(run)
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
                run.history.dump_jsonl(out_dir / "history.jsonl")
    by_id = {r.id: r for r in results}
    ordered = []
    for spec in lab.checks:
        if spec.id in by_id:
            ordered.append(by_id[spec.id])
        else:
            reason = failure.splitlines()[0] if failure else "the scenario did not reach this check"
            ordered.append(CheckResult.error(spec.id, spec.title or spec.id, spec.points, reason, spec.hint or None))
    notes = (run.notes if run else []) + ([failure] if failure else [])
    logs = {name: s.log_tail() for name, s in run.services.items()} if run else {}
    crashed = [name for name, s in run.services.items() if s.died_on_its_own] if run else []
    return RunReport(lab=lab.id, title=lab.title, submission=str(submission), seed=seed,
                     runtime=run.stack.runtime if run else runtime, started_at=started,
                     duration=time.monotonic() - t0, results=ordered, notes=notes, logs=logs, crashed=crashed)
