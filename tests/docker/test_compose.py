"""The Compose files: every one validates, and lab 1's stack comes up healthy and goes away."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psycopg
import pytest

from tests.docker.conftest import REPO
from tests.roundtrips import kafka_roundtrip

COMPOSE_FILES = sorted(p for p in (REPO / "compose").glob("*.yaml") if p.name not in ("infra.yaml", "ci.override.yaml"))


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_config_validates(path: Path):
    for extra in ([], ["-f", str(REPO / "compose" / "ci.override.yaml")]):
        out = subprocess.run(["docker", "compose", "-f", str(path), *extra, "--profile", "services", "config", "-q"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr


def test_lab1_stack_up_healthy_and_down(compose):
    try:
        compose("up", "-d", "--wait", "--wait-timeout", "120", "kafka", "postgres")
        ps = compose("ps", "--format", "{{.Service}} {{.Health}}").stdout
        assert "kafka healthy" in ps and "postgres healthy" in ps, ps
        with psycopg.connect("postgresql://postgres@127.0.0.1:15432/postgres", connect_timeout=5) as conn:
            assert conn.execute("SHOW wal_level").fetchone()[0] == "logical"
        kafka_roundtrip("127.0.0.1:19092")
    finally:
        compose("down", "-v", "--remove-orphans", check=False)
    assert compose("ps", "-q").stdout.strip() == ""


def test_compose_runtime_for_make_lab_runs_and_cleans_up():
    """`make lab-1` with Docker: infrastructure via Compose on free ports, gone after stop."""
    from grader.stack import make_stack
    from tests.roundtrips import postgres_roundtrip

    stack = make_stack(["kafka", "postgres"], "compose", lab_id="lab-1").start()
    project = f"labkit-lab-1-{os.getpid()}"
    try:
        kafka_roundtrip(stack.url("kafka"))
        postgres_roundtrip(stack.url("postgres"))
    finally:
        stack.stop()
    left = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"],
                          capture_output=True, text=True, timeout=30).stdout.strip()
    assert left == ""
