"""The docker runtime on real containers: round trips, faults, cleanup, and the grader's verdicts."""
from __future__ import annotations

import os
import time
import tomllib
from pathlib import Path

import psycopg
import pytest
import redis

from grader.lab import find_lab
from grader.runner import grade
from grader.stack import StackError, make_stack
from grader.wait import wait_until
from tests.docker.conftest import labkit_containers
from tests.roundtrips import ROUNDTRIPS
from tests.grading import summary
from tests.test_synthetic_class import MUTANTS


@pytest.fixture(scope="module")
def docker_stack():
    with make_stack(["kafka", "postgres", "redis", "rabbitmq"], "docker") as stack:
        yield stack


@pytest.mark.parametrize("kind", sorted(ROUNDTRIPS))
def test_roundtrip(docker_stack, kind):
    ROUNDTRIPS[kind](docker_stack.url(kind))


def test_postgres_kill_and_restart_keeps_data():
    with make_stack(["postgres"], "docker") as stack:
        pg = stack.servers["postgres"]
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE survives (i int)")
            conn.execute("INSERT INTO survives VALUES (1)")
        pg.kill()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(pg.url, connect_timeout=2)
        pg.restart()
        with psycopg.connect(pg.url) as conn:
            assert conn.execute("SELECT count(*) FROM survives").fetchone()[0] == 1


def test_redis_pause_freezes_and_unpause_resumes():
    with make_stack(["redis"], "docker") as stack:
        server = stack.servers["redis"]
        client = redis.Redis.from_url(server.url, socket_timeout=1)
        assert client.ping()
        server.pause()
        with pytest.raises(redis.TimeoutError):
            client.ping()
        server.unpause()
        assert wait_until(client.ping, 10, "redis answers after unpause", ignore=(redis.RedisError,))


def test_unknown_network_mode_is_refused(monkeypatch):
    monkeypatch.setenv("LABKIT_DOCKER_NETWORK", "overlay")
    with pytest.raises(StackError, match="LABKIT_DOCKER_NETWORK"):
        make_stack(["redis"], "docker")


def test_a_container_that_exits_fails_fast_with_its_log(monkeypatch):
    monkeypatch.setenv("LABKIT_IMAGE_REDIS", os.environ.get("LABKIT_IMAGE_POSTGRES", "postgres:17"))  # wrong server
    before = set(labkit_containers())
    started = time.monotonic()
    with pytest.raises(StackError, match="container log"):
        make_stack(["redis"], "docker").start(timeout=60)
    assert time.monotonic() - started < 30
    # removal is asked for at once; under load the daemon may list it a moment longer
    wait_until(lambda: set(labkit_containers()) <= before, 30, "the failed container to be removed")


def test_stop_leaves_no_container():
    before = set(labkit_containers())
    stack = make_stack(["redis", "kafka"], "docker").start()
    assert len(set(labkit_containers()) - before) == 2
    stack.stop()
    assert set(labkit_containers()) <= before


def test_grader_reference_passes_on_docker(tmp_path):
    lab = find_lab("lab-1")
    report = grade(lab, lab.reference, "docker", seed=5, out_dir=tmp_path)
    assert report.runtime == "docker"
    assert report.passed, summary(report)


def test_grader_mutant_fails_on_docker_as_on_native(tmp_path):
    lab = find_lab("lab-1")
    mutant = MUTANTS / "no_inbox_dedupe"
    expected = tomllib.loads((mutant / "mutant.toml").read_text())["expect_fail"]
    report = grade(lab, mutant, "docker", seed=7, out_dir=tmp_path)
    failed = {r.id for r in report.results if not r.passed}
    assert set(expected) <= failed, summary(report)


def test_killing_the_caller_removes_its_containers(tmp_path):
    """SIGKILL the process that started a container: the guardian removes it (no Ryuk needed)."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import textwrap

    from grader.wait import wait_until

    report = tmp_path / "started.json"
    script = textwrap.dedent(f"""
        import json, threading
        from grader.stack import make_stack
        stack = make_stack(["redis"], "docker").start()
        open({str(report)!r}, "w").write(json.dumps(stack.servers["redis"].container_id))
        threading.Event().wait()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        container = wait_until(lambda: report.exists() and json.loads(report.read_text() or "null"), 120,
                               "a container started")
        assert container in labkit_containers() or any(container.startswith(c) for c in labkit_containers())
        os.kill(proc.pid, signal.SIGKILL)
        wait_until(lambda: not any(container.startswith(c) for c in labkit_containers()), 60,
                   "the container removed by the guardian")
    finally:
        if proc.poll() is None:
            proc.kill()
