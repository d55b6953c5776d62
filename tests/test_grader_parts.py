"""Grader parts against real servers and processes: the database-side faults, the supervisor, the
HTTP workload's total deadline, and retries of unknown outcomes."""
from __future__ import annotations

import http.server
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from grader.history import History
from grader.lab import ServiceSpec
from grader.launch import Service
from grader.nemesis import fault_events
from grader.nemesis.database import RejectCommits, StallCommits
from grader.supervisor import Supervisor
from grader.wait import wait_until
from grader.workloads.http import HttpWorkload
from grader.workloads.orders import Orders


@dataclass
class FakeRun:
    history: History = field(default_factory=History)
    services: dict = field(default_factory=dict)
    stack: object = None
    proxies: dict = field(default_factory=dict)
    out_dir: Path = Path(".")
    notes: list = field(default_factory=list)

    def note(self, message: str) -> None:
        self.notes.append(message)


@pytest.fixture
def database(native_stack):
    ns = native_stack.namespace(prefix="parts")
    with psycopg.connect(ns.service_url("postgres"), autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (order_id text PRIMARY KEY, customer_id text NOT NULL)")
    yield ns.owner_url, native_stack
    ns.drop()


def test_reject_commits_refuses_marked_rows_at_commit_only(database):
    url, stack = database
    run = FakeRun(stack=stack)
    assert RejectCommits(url, "orders", "customer_id", "reject-").apply(run)
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO public.orders VALUES ('o-1', 'c-1')")
        conn.commit()
        conn.execute("INSERT INTO public.orders VALUES ('o-2', 'reject-1')")  # the insert itself succeeds ...
        with pytest.raises(psycopg.errors.RaiseException, match="refused at commit"):
            conn.commit()  # ... the COMMIT is refused
    with psycopg.connect(url) as conn:
        assert [r[0] for r in conn.execute("SELECT order_id FROM public.orders")] == ["o-1"]
    assert fault_events(run.history)[0]["effective"]


def test_stall_commits_delays_marked_commits_while_others_commit(database):
    url, stack = database
    StallCommits(url, "orders", "customer_id", "slow-", seconds=1.5).apply(FakeRun(stack=stack))
    committed: dict[str, float] = {}

    def insert(order_id: str, customer: str) -> None:
        with psycopg.connect(url) as conn:
            conn.execute("INSERT INTO public.orders VALUES (%s, %s)", (order_id, customer))
            conn.commit()
        committed[order_id] = time.monotonic()

    started = time.monotonic()
    slow = threading.Thread(target=insert, args=("o-slow", "slow-1"))
    slow.start()
    insert("o-fast", "c-1")  # allocated after the slow one, committed before it
    slow.join(10)
    assert committed["o-fast"] < committed["o-slow"]
    assert committed["o-slow"] - started >= 1.5


def test_supervisor_restarts_a_service_that_exits_and_records_the_exit(tmp_path):
    (tmp_path / "svc.py").write_text("import sys, time\ntime.sleep(0.3)\nsys.exit(3)\n")
    service = Service(ServiceSpec("svc", [sys.executable, "svc.py"]), tmp_path, {}, tmp_path)
    run = FakeRun(services={"svc": service})
    service.start()
    supervisor = Supervisor(run, interval=0.1).start()
    try:
        wait_until(lambda: len(run.history.observations("exit")) >= 2, 15, "two exits")
    finally:
        supervisor.stop()
        service.stop()
    exits = [e.data for e in run.history.observations("exit")]
    assert exits[0] == {"what": "exit", "service": "svc", "code": 3, "restart": True}
    assert service.died_on_its_own and service.restarts == 0  # started again, not "restarted" by a fault


EXITS_ONCE = """
import os, sys, time
with open("lives", "a") as f:
    f.write(f"{os.getpid()}\\n")
if not os.path.exists("exited"):  # the first life exits by itself once told, the next ones run on
    open("exited", "w").close()
    while not os.path.exists("go"):
        time.sleep(0.05)
    sys.exit(1)
while True:
    time.sleep(0.1)
"""


def test_a_service_that_exits_while_armed_has_one_life_at_a_time(tmp_path):
    """The life exits by itself during a crash point's window: the supervisor starts the next one
    (armed the same: arming is live), the fault kills that one at its bound and starts another -
    never two at once (the orphan of a supervisor restart racing a fault's restart)."""
    import psutil

    from grader.nemesis import CrashPoint

    (tmp_path / "svc.py").write_text(EXITS_ONCE)
    service = Service(ServiceSpec("svc", [sys.executable, "svc.py"]), tmp_path, {}, tmp_path,
                      crash_dir=tmp_path / "crash")
    run = FakeRun(services={"svc": service}, out_dir=tmp_path)

    def lives(n: int) -> list[int]:
        return wait_until(lambda: len(found := (tmp_path / "lives").read_text().split()) >= n and found, 30,
                          f"{n} lives", ignore=(OSError,))

    service.start()
    lives(1)
    supervisor = Supervisor(run, interval=0.1).start()
    try:
        fault = CrashPoint("svc", "consumer-ack", "before", fallback_after=20)  # never reached
        with fault.active(run):
            (tmp_path / "go").touch()  # the first life exits by itself, armed
            lives(2)  # the supervisor's life
        assert fault.detail["how"] == "fallback-kill"
        pids = [int(p) for p in lives(3)]  # ... killed at the bound, and the fault's
        assert len(pids) == 3
        running = [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
        assert running == [service.proc.pid]
    finally:
        supervisor.stop()
        service.stop()


def test_one_owner_per_life_when_the_supervisor_and_a_fault_restart_race(tmp_path):
    """A service that exits by itself while a fault restarts it: the supervisor and the fault both
    want the next life; exactly one copy runs afterwards, and no life number is started twice."""
    import re

    import psutil

    (tmp_path / "svc.py").write_text(
        "import os, sys, time\n"
        "if not os.path.exists('exited'):\n    open('exited', 'w').close()\n    sys.exit(3)\n"
        "time.sleep(60)\n")
    service = Service(ServiceSpec("svc", [sys.executable, "svc.py"]), tmp_path, {}, tmp_path)
    run = FakeRun(services={"svc": service})
    try:
        for _ in range(5):
            (tmp_path / "exited").unlink(missing_ok=True)
            service.start()
            supervisor = Supervisor(run, interval=0.001).start()
            wait_until(lambda: (tmp_path / "exited").exists(), 10, "the life deciding to exit")
            service.restart()  # a crash point's restart, racing the supervisor's start of the next life
            supervisor.stop()  # its last round is over: nobody starts a life any more
            running = [c.pid for c in psutil.Process().children(recursive=True)
                       if "svc.py" in " ".join(c.cmdline()) and c.status() != psutil.STATUS_ZOMBIE]
            assert running == [service.proc.pid], (running, service.proc.pid)
    finally:
        service.stop()
    lives = re.findall(r"\(life (\d+)\)", (tmp_path / "svc.log").read_text())
    assert len(lives) == len(set(lives)), lives




class _Drip(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # answers one byte a second: never done within the deadline
        self.send_response(200)
        self.send_header("Content-Length", "100")
        self.end_headers()
        for _ in range(100):
            try:
                self.wfile.write(b" ")
                self.wfile.flush()
            except OSError:
                return
            time.sleep(1)

    def log_message(self, *args) -> None:
        pass


def test_a_dripping_answer_is_cut_at_the_total_deadline_and_recorded_as_unknown():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Drip)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    history = History()
    client = HttpWorkload(f"http://127.0.0.1:{server.server_port}", history, timeout=2)
    try:
        started = time.monotonic()
        reply = client.send("place", "POST", "/orders", key="k", body={})
        assert time.monotonic() - started < 5  # per-read timeouts alone would wait ~100 s
    finally:
        client.close()
        server.shutdown()
    assert reply.status == 0 and reply.type == "info"
    assert history.ops()[0].type == "info"


def test_unknown_outcomes_are_retried_with_their_keys_once():
    history = History()
    answered = history.invoke("client", "place", key="k-ok", body={"customer_id": "c", "amount_cents": 1})
    history.complete(answered, "ok", "client", "place", status=201)
    lost = history.invoke("client", "place", key="k-?", body={"customer_id": "c", "amount_cents": 2})
    history.complete(lost, "info", "client", "place", status=0)
    sent = []

    class Recorder(Orders):
        def place(self, key, body, **meta):
            sent.append((key, body, meta))

    Recorder(HttpWorkload("http://127.0.0.1:9", history), seed=1).retry_unknown(history)
    assert sent == [("k-?", {"customer_id": "c", "amount_cents": 2}, {"retry": True})]


class _NotFound(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.send_response(404)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args) -> None:
        pass


def test_a_load_that_gets_nothing_acknowledged_stops_the_run_and_says_why(monkeypatch):
    """A submission whose API never acknowledges an order costs seconds, not a full run of faults."""
    import grader.workloads.orders as orders
    from grader.launch import ServiceFailed
    from grader.scenario import Nemesis, PhaseContext

    monkeypatch.setattr(orders, "GIVE_UP_AFTER_S", 0.5)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    history = History()
    client = HttpWorkload(f"http://127.0.0.1:{server.server_port}", history, timeout=2)
    ctx = PhaseContext(Nemesis(None, [], time.monotonic(), lambda f: 0), time.monotonic(), 60)
    try:
        with pytest.raises(ServiceFailed, match=r"acknowledged none of \d+ orders .* x 404"):
            Orders(client, seed=1).load(ctx, orders=10_000, rate=200, concurrency=2)
    finally:
        client.close()
        server.shutdown()
