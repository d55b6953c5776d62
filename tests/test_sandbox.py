"""Untrusted submissions under grader.sandbox: every attack in tests/hostile fails, the reference still works.

Each test starts one service of a hostile submission with grader.launch.Service inside a Sandbox,
against the session's native stack (no full graded run), and checks from outside: the log, files,
PIDs, connections.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import psycopg
import pytest

from grader.lab import HttpSpec, ServiceSpec
from grader.launch import Service, ServiceFailed
from grader.sandbox import Limits, Sandbox, isolation_available
from grader.sandbox.firewall import ports_in
from grader.sandbox.sandbox import CONTRACT_VARS
from grader.stack.procs import free_port
from grader.wait import wait_until

REPO = Path(__file__).resolve().parents[1]
HOSTILE = Path(__file__).resolve().parent / "hostile"
ORDER_API = ServiceSpec("order_api", ["python", "-m", "order_api"], http=HttpSpec())

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="isolation runs submissions as a uid of their own: needs root")


def snapshot(pids) -> list[psutil.Process]:
    """The processes behind `pids` now: checked later by identity, not by a PID another process may reuse."""
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    return procs


def left_running(procs: list[psutil.Process]) -> list[str]:
    left = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{proc.pid} {proc.name()} uid={proc.uids().real}")
        except psutil.NoSuchProcess:
            pass
    return left


@pytest.fixture
def run_env(native_stack):
    ns = native_stack.namespace(prefix="box")
    yield ns
    ns.drop()


@pytest.fixture
def sandbox_for(tmp_path):
    boxes = []

    def make(submission: Path, **limits) -> Sandbox:
        box = Sandbox(submission, Limits(**limits)).open()
        boxes.append(box)
        return box

    yield make
    for box in boxes:
        box.close()


def start(box: Sandbox, submission: Path, env: dict[str, str], log_dir: Path, healthy: bool = True) -> Service:
    log_dir.mkdir(parents=True, exist_ok=True)
    service = Service(ORDER_API, submission, env, log_dir, sandbox=box).start()
    if healthy:
        service.wait_healthy(60)
    return service


def log_of(service: Service) -> str:
    return service.log.read_text(errors="replace")


def test_isolation_is_available_here():
    assert isolation_available() is None


def test_reference_order_api_answers_health_inside_the_sandbox(run_env, sandbox_for, tmp_path):
    box = sandbox_for(REPO / "services")
    service = start(box, REPO / "services", run_env.env(), tmp_path)
    assert httpx.get(service.base_url + "/healthz", timeout=5).status_code == 200
    python = [psutil.Process(p) for p in box.pids() if psutil.Process(p).name().startswith("python")]
    assert python and all(p.uids().real == box.uid != 0 for p in python)
    assert all(p.uids().real != os.getuid() for p in python)
    env = python[0].environ()
    assert set(env) <= {*CONTRACT_VARS, "PORT", "PATH", "LANG", "HOME", "TMPDIR", "PYTHONPATH", "PYTHONUNBUFFERED",
                        "PWD"}  # PWD: set by bwrap's --chdir
    service.stop()
    assert service.exit_code() == 0  # SIGTERM reached the service itself: it shut down cleanly


def test_the_reference_is_not_importable(run_env, sandbox_for, tmp_path):
    submission = HOSTILE / "imports_reference"
    service = start(sandbox_for(submission), submission, run_env.env(), tmp_path, healthy=False)
    wait_until(lambda: not service.alive(), 30, "the hostile service to give up")
    log = log_of(service)
    assert service.exit_code() == 3, log
    assert "ATTACK SUCCEEDED" not in log
    assert "No module named 'services.order_api'" in log
    assert log.count("ATTACK FAILED") == 3


def test_results_seeds_and_the_grader_s_env_are_out_of_reach(run_env, sandbox_for, tmp_path, monkeypatch):
    secret = f"SEED-{secrets.token_hex(8)}"
    monkeypatch.setenv("LABKIT_TEST_SECRET", secret)  # in the grader's own environment
    (tmp_path / "results" / "lab-1").mkdir(parents=True)
    (tmp_path / "results" / "lab-1" / "report.json").write_text(f'{{"seed": "{secret}"}}')
    submission = tmp_path / "class" / "reads_results"  # results next to the class folder, too
    shutil.copytree(HOSTILE / "reads_results", submission)
    (tmp_path / "class" / "seed.txt").write_text(secret)
    service = start(sandbox_for(submission), submission, run_env.env(), tmp_path / "logs")
    log = log_of(service)
    assert secret not in log
    assert "ATTACK FAILED: 0 result files read" in log, log[-3000:]


def test_writes_outside_its_folder_are_denied(run_env, sandbox_for, tmp_path):
    submission = HOSTILE / "writes_outside"
    box = sandbox_for(submission)
    service = start(box, submission, run_env.env(), tmp_path)
    log = log_of(service)
    assert "ATTACK SUCCEEDED" not in log, log
    assert log.count("ATTACK FAILED") >= 7
    assert not list((REPO / ".venv").glob("lib/python*/site-packages/pwned.pth"))
    assert not (REPO / "services" / "pwned.py").exists() and not (box.root / "pwned.txt").exists()
    assert not (box.site / "services" / "pwned.py").exists()
    assert not list(submission.glob("**/pwned*"))  # the original is never touched: the run has a copy


def test_a_double_forked_survivor_is_killed(run_env, sandbox_for, tmp_path):
    submission = HOSTILE / "forks_survivor"
    box = sandbox_for(submission)
    service = start(box, submission, run_env.env(), tmp_path)
    wait_until(lambda: "survivor running" in log_of(service), 10, "the survivor to start")
    procs = snapshot(box.pids())
    assert len([p for p in procs if p.uids().real == box.uid]) >= 2  # the service and its survivor
    service.stop(timeout=5)
    assert not left_running(procs), left_running(procs)
    assert box.pids() == set()


def test_a_flooded_log_is_capped_and_the_disk_bounded(run_env, sandbox_for, tmp_path):
    submission = HOSTILE / "floods_log"
    cap = 256 * 1024
    box = sandbox_for(submission, log_size=cap, file_size=8 << 20, disk=64 << 20)
    service = start(box, submission, run_env.env(), tmp_path)
    wait_until(lambda: "log truncated here" in log_of(service), 30, "the log cap")
    size = service.log.stat().st_size
    assert size < cap + 1024
    assert service.alive()  # the service keeps running; only its output is dropped
    assert "ATTACK FAILED: big file stopped after 8388608 bytes" in log_of(service)
    if box.mounted:  # its folder is a tmpfs of 64 MiB: many small files hit that, not the host's disk
        assert "ATTACK FAILED: many files stopped after" in log_of(service)
        assert "No space left on device" in log_of(service)
    assert service.log_tail(3)  # read from the end
    service.stop()
    assert service.log.stat().st_size == size


def test_another_run_s_database_is_out_of_reach(native_stack, run_env, sandbox_for, tmp_path):
    other = native_stack.namespace(prefix="victim")
    secret = f"secret-{secrets.token_hex(8)}"
    try:
        with psycopg.connect(other.service_url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE TABLE payments (note text)")
            conn.execute("INSERT INTO payments VALUES (%s)", (secret,))
        submission = HOSTILE / "other_namespace_db"
        service = start(sandbox_for(submission), submission, run_env.env(), tmp_path)
        log = log_of(service)
        assert other.name in log  # it can see the database exists ...
        assert secret not in log and "ATTACK SUCCEEDED" not in log, log  # ... but not get in
        assert log.count(f"ATTACK FAILED: {other.name} via") == 4
    finally:
        other.drop()


def test_the_grader_s_reads_run_nothing_of_the_submission_s_with_more_rights(native_stack, run_env, sandbox_for,
                                                                             tmp_path):
    """Schemas named `postgres` and after the reader, views over a function that tries ALTER ROLE
    SUPERUSER, COPY ... TO PROGRAM and pg_authid, a SECURITY DEFINER twin, pg_catalog look-alikes:
    the grader's reads (lab 1's and lab 2's, as the scenarios make them) return the real rows, and
    whoever the traps ran as gained nothing."""
    from grader.history import History
    from grader.observe.postgres import observe_rows, observe_slots, rows_stable
    from grader.scenarios import lab1, lab2

    marker = Path(f"/tmp/labkit-escape-{run_env.name}")
    submission = HOSTILE / "shadows_grader_reads"
    service = start(sandbox_for(submission), submission, run_env.env(), tmp_path)
    try:
        assert "traps set" in log_of(service), log_of(service)
        url = run_env.reader_url
        history = History()
        downstream = observe_rows(history, "downstream", url, lab1.DOWNSTREAM_SQL)
        again = observe_rows(history, "again", url, dict(reversed(lab1.DOWNSTREAM_SQL.items())))  # traps first
        for data in (downstream, again):
            assert data["orders"] == [["real-1", "c-real", 100, "placed"]], data
            assert data["totals"] == [["c-real", 1, 100]], data
        assert observe_rows(history, "lab2", url, lab2.DOWNSTREAM_SQL)["orders"] == [["real-1", "c-real", 100, "placed"]]
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 1 FROM public.orders WHERE order_id = %s", ("fake-1",)).fetchone() is None
            assert conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0] != "0/1"
        assert observe_slots(history, url) == []
        rows_stable(url, "SELECT count(*) FROM public.orders")()
        # The traps ran (as the reader, and as the run's own role) and every attempt failed.
        expected = [f"ATTACK FAILED: as {run_env.name}_grader: {what}" for what in ("ALTER ROLE", "COPY TO PROGRAM",
                                                                                     "pg_authid")]
        expected += [f"ATTACK FAILED: as {run_env.name}: {what}" for what in ("ALTER ROLE", "COPY TO PROGRAM", "pg_authid")]
        wait_until(lambda: all(e in log_of(service) for e in expected), 15, "the traps' reports")
        log = log_of(service)
        assert "ATTACK SUCCEEDED" not in log, log
    finally:
        service.stop()
    assert not marker.exists(), marker.read_text()
    with psycopg.connect(native_stack.url("postgres")) as conn:
        assert [r for (r,) in conn.execute("SELECT rolname FROM pg_roles WHERE rolsuper")] == ["postgres"]


def test_a_hanging_service_is_bounded_and_killed(run_env, sandbox_for, tmp_path):
    submission = HOSTILE / "hangs"
    box = sandbox_for(submission)
    service = start(box, submission, run_env.env(), tmp_path, healthy=False)
    t0 = time.monotonic()
    with pytest.raises(ServiceFailed, match="did not become healthy"):
        service.wait_healthy(3)
    procs = snapshot(box.pids())
    service.stop(timeout=1)  # it ignores SIGTERM: SIGKILL after the timeout
    assert time.monotonic() - t0 < 15
    assert not left_running(procs) and box.pids() == set()


def test_the_wall_time_limit_kills_the_whole_run(run_env, sandbox_for, tmp_path):
    submission = HOSTILE / "forks_survivor"
    box = sandbox_for(submission, wall_time=4)
    service = start(box, submission, run_env.env(), tmp_path)
    wait_until(lambda: not service.alive(), 20, "the wall-time limit")
    assert box.expired and box.pids() == set()


def test_links_out_of_the_submission_are_not_copied_into_the_sandbox(sandbox_for, tmp_path):
    """tests/hostile/links_out: the kit's reference via /proc/self/cwd, a classmate via `..`, a link to
    a link. The copy holds none of them, each left out with a note for the report; a link that stays
    inside is kept and resolves inside the copy."""
    submission = tmp_path / "links_out"
    shutil.copytree(HOSTILE / "links_out", submission, symlinks=True)
    (submission / "own").mkdir()
    (submission / "own" / "x.py").write_text("X = 1\n")
    (submission / "inside").symlink_to("own/x.py")
    cwd = os.getcwd()
    os.chdir(REPO)  # from here /proc/self/cwd/services is the kit's reference
    try:
        box = sandbox_for(submission)
    finally:
        os.chdir(cwd)
    assert sorted(p.name for p in box.workdir.iterdir()) == [".home", "inside", "own"]
    assert (box.workdir / "inside").read_text() == "X = 1\n"
    assert sorted(note.split(":")[0] for note in box.notes) == ["kit", "order_api", "read_model", "services"]


def test_tmp_and_dev_shm_are_writable_by_the_run(sandbox_for, tmp_path):
    box = sandbox_for(HOSTILE / "hangs")
    code = ("import os, tempfile\n"
            "with tempfile.NamedTemporaryFile(dir=os.environ['TMPDIR']) as f: f.write(b'x')\n"
            "open('/dev/shm/labkit-probe', 'w').write('x')\n"
            "print('WROTE', tempfile.gettempdir())\n")
    proc = box.spawn([sys.executable, "-c", code], tmp_path / "probe.log", {})
    wait_until(lambda: not proc.alive(), 60, "the probe to exit")
    log = (tmp_path / "probe.log").read_text(errors="replace")
    assert proc.exit_code() == 0 and "WROTE /tmp" in log, log


def test_crash_markers_are_copied_back_but_never_a_fifo(sandbox_for, tmp_path):
    box = sandbox_for(HOSTILE / "hangs")
    public = tmp_path / "crash-1.json"
    private = Path(box.environment({"LABKIT_CRASH_MARKER": str(public)})["LABKIT_CRASH_MARKER"])
    assert private.parent == box.markers
    os.mkfifo(private)
    box.collect_markers()  # must not block on the FIFO
    assert not public.exists()
    private.unlink()
    private.write_text('{"point": "consumer-ack"}')
    box.collect_markers()
    assert public.read_text() == '{"point": "consumer-ack"}'


LIVE_WRITER = """
import os, time, psycopg
with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
    while True:
        conn.execute("INSERT INTO live_armed VALUES (%s)", (os.getpid(),))
        conn.commit()
        time.sleep(0.05)
"""


def test_a_crash_point_is_armed_live_inside_the_sandbox(run_env, sandbox_for, tmp_path):
    """The sandboxed service reads the grader's arms (a read-only bind of their folder) and its crash
    site's state comes back out: the planned crash lands at the 3rd commit, with no restart to arm it."""
    from grader.history import History
    from grader.launch import launch_services
    from grader.nemesis import CrashPoint

    submission = tmp_path / "submission"
    submission.mkdir()
    (submission / "writer.py").write_text(LIVE_WRITER)
    url = run_env.env()["DATABASE_URL"]  # the service's own role
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE live_armed (pid int)")
    box = sandbox_for(submission)
    writer = launch_services({"writer": ServiceSpec("writer", ["python", "writer.py"])}, submission, run_env.env(),
                             tmp_path / "out" / "logs", sandbox=box)["writer"]
    run = type("Run", (), {"services": {"writer": writer}, "history": History(), "out_dir": tmp_path / "out"})()
    fault = CrashPoint("writer", "db-commit", "after", nth=3, fallback_after=30)
    try:
        with fault.active(run):
            writer.start()
        assert fault.effective and fault.detail["how"] == "crash-point", fault.detail
        assert writer.restarts == 1 and writer.alive()
        inner_pid = fault.detail["reached"]["pid"]  # the process's pid in its own namespace
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM live_armed WHERE pid = %s", (inner_pid,)).fetchone()[0] == 3
    finally:
        writer.stop(timeout=2)


def test_only_the_given_ports_are_reachable(native_stack, run_env, sandbox_for, tmp_path):
    """The contract names the fault proxy; the broker behind it (here: a port not given) is refused."""
    box = sandbox_for(HOSTILE / "reaches_around_proxy")
    if box.egress is None:
        pytest.skip("no nftables here: the egress filter is off (documented in grader/sandbox/README.md)")
    broker = urlsplit("//" + native_stack.url("kafka")).port
    env = {**run_env.env(), "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}  # stands in for the proxy
    service = start(box, HOSTILE / "reaches_around_proxy", env, tmp_path)
    log = log_of(service)
    assert "ATTACK SUCCEEDED" not in log, log
    assert f"ATTACK FAILED: 127.0.0.1:{broker}:" in log
    with psycopg.connect(env["DATABASE_URL"], connect_timeout=5):  # the grader's own view is untouched
        pass


def test_killing_the_grader_leaves_nothing_of_the_run(tmp_path):
    """SIGKILL the grader while a survivor-forking submission runs: the guardian kills bwrap, the PID
    namespace takes every process of the run with it, its folder goes; the next sandbox sweeps its cgroup."""
    report = tmp_path / "started.json"
    script = textwrap.dedent(f"""
        import json, threading
        from pathlib import Path
        from grader.lab import HttpSpec, ServiceSpec
        from grader.launch import Service
        from grader.sandbox import Sandbox
        from grader.wait import wait_until
        box = Sandbox(Path({str(HOSTILE / "forks_survivor")!r})).open()
        spec = ServiceSpec("order_api", ["python", "-m", "order_api"], http=HttpSpec())
        service = Service(spec, box.submission, {{}}, Path({str(tmp_path)!r}), sandbox=box).start()
        wait_until(lambda: "survivor running" in service.log.read_text(), 30, "the survivor")
        open({str(report)!r}, "w").write(json.dumps({{"pids": sorted(box.pids()), "root": str(box.root),
                                                      "cgroup": [str(d) for d in box.cgroup.dirs] if box.cgroup else []}}))
        threading.Event().wait()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    try:
        started = wait_until(lambda: report.exists() and json.loads(report.read_text() or "null"), 60, "the run")
        procs = snapshot(started["pids"])
        assert len(procs) >= 4
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        wait_until(lambda: not left_running(procs), 30, "every process of the run killed")
        wait_until(lambda: not os.path.exists(started["root"]), 30, "its folder (a tmpfs) unmounted and removed")
        Sandbox(HOSTILE / "hangs").open().close()  # the next run sweeps the dead run's cgroups
        assert not any(Path(d).exists() for d in started["cgroup"])
    finally:
        if proc.poll() is None:
            proc.kill()


PIKA_ROUND_TRIP = """
    import os, pika
    from services.common.http import json_app, serve
    connection = pika.BlockingConnection(pika.URLParameters(os.environ["AMQP_URL"]))
    channel = connection.channel()
    channel.queue_declare(os.environ["LAB_NAMESPACE"] + ".q")
    channel.basic_publish("", os.environ["LAB_NAMESPACE"] + ".q", b"hello")
    method, _, body = channel.basic_get(os.environ["LAB_NAMESPACE"] + ".q", auto_ack=True)
    print("round trip:", body.decode(), flush=True)
    connection.close()
    serve(json_app("pika-user"))
"""


def test_plain_pika_works_under_the_egress_filter(native_stack, run_env, sandbox_for, tmp_path):
    """pika's I/O loop wakes itself through a loopback TCP socket pair the filter would refuse; the
    sandbox's sitecustomize gives it a Unix one, so a learner's plain pika code works as under check."""
    submission = tmp_path / "pika_user"
    (submission / "order_api").mkdir(parents=True)
    (submission / "order_api" / "__main__.py").write_text(textwrap.dedent(PIKA_ROUND_TRIP))
    box = sandbox_for(submission)
    if box.egress is None:
        pytest.skip("no nftables here: the egress filter is off")
    service = start(box, submission, run_env.env(), tmp_path / "logs")
    assert "round trip: hello" in log_of(service), log_of(service)[-2000:]


def test_the_egress_allow_list_comes_from_the_contract():
    env = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9101,localhost:9102", "DATABASE_URL": "postgresql://a:b@127.0.0.1:5501/a",
           "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "PORT": "8123", "LAB_NAMESPACE": "lab1_abc123",
           "REDIS_URL": "redis://a:b@10.0.0.5:6379/0"}  # not loopback: never allowed
    assert ports_in(env) == {9101, 9102, 5501, 4318, 8123}


def test_processes_and_memory_are_bounded(run_env, sandbox_for, tmp_path):
    submission = HOSTILE / "exhausts_resources"
    box = sandbox_for(submission, processes=64, memory=256 << 20)
    service = start(box, submission, run_env.env(), tmp_path, healthy=False)
    wait_until(lambda: not service.alive(), 60, "the hostile service to hit its limits")
    log = log_of(service)
    assert "ATTACK SUCCEEDED" not in log and "ATTACK FAILED: fork bomb stopped after" in log, log[-2000:]
    forked = int(log.split("fork bomb stopped after ")[1].split()[0])
    assert forked < 64
    held = [int(line.split()[1]) for line in log.splitlines() if line.startswith("holding ")]
    # OOM-killed by its cgroup at the limit; without a cgroup, RLIMIT_AS (4x, virtual) gives a MemoryError
    assert max(held, default=0) <= (256 if box.cgroup else 1024)
    assert service.exit_code() in (-9, 4), log[-2000:]
    assert box.pids() == set()


def test_the_grader_itself_stays_bounded_under_a_flood(run_env, sandbox_for, tmp_path):
    """The receiver runs in the grader, outside the sandbox's limits: 5M empty spans, a gzip bomb and
    300 held connections leave it at its per-run limits, on one thread, noted in the history; the
    submission's spinners are held to the run's CPU quota."""
    import threading

    from grader.history import History
    from grader.otlp import OtlpReceiver, ReceiverLimits

    history = History()
    with OtlpReceiver(history, grpc=False) as receiver:
        rss_before = psutil.Process().memory_info().rss
        box = sandbox_for(HOSTILE / "floods_grader")
        service = start(box, HOSTILE / "floods_grader", {**run_env.env(), **receiver.env()}, tmp_path, healthy=False)
        wait_until(lambda: "flood done" in log_of(service) or not service.alive(), 300, "the flood to end")
        log = log_of(service)
        assert "flood done" in log and "ATTACK SUCCEEDED" not in log, log[-2000:]
        assert "answer 413" in log  # the bomb is refused once inflated past the body limit
        assert len(receiver.spans()) == len(history.events("span")) == ReceiverLimits().max_spans
        assert receiver.received_spans >= 500_000 and receiver.dropped_requests >= 8
        assert receiver.capped >= {"spans", "connections"}
        assert [t.name for t in threading.enumerate()].count("otlp-http") == 1
        assert psutil.Process().memory_info().rss - rss_before < 400 << 20
        if box.cgroup is not None and box.cgroup.cpu_limit() is not None:  # the spinners share one CPU's quota
            assert box.cgroup.cpu_limit() == Limits().cpus == 1.0
            group = box.cgroup.dirs[0].name
            assert len(box.pids()) > 8 and all(group in _cgroup_of(p, "cpu") for p in box.pids())


def _cgroup_of(pid: int, controller: str) -> str:
    """The cgroup path of `pid` in `controller`'s hierarchy (v2: the unified one)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(",") or not controllers:
            return path
    return ""
