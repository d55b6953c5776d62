"""The Compose files: every one validates, and lab 1's stack (infrastructure, then the reference
services in containers) comes up healthy with the CI override and goes away without a trace."""
from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest

from grader.kafka import ensure_topics
from grader.wait import wait_until
from tests.docker.conftest import CI_OVERRIDE, COMPOSE_DIR, labkit_containers
from tests.roundtrips import kafka_roundtrip

LAB_FILES = sorted(COMPOSE_DIR.glob("lab-*.yaml"))


def compose_config(*files: Path) -> subprocess.CompletedProcess:
    args = [a for f in files for a in ("-f", str(f))]
    return subprocess.run(["docker", "compose", *args, "--profile", "*", "config", "-q"],
                          capture_output=True, text=True, timeout=60, cwd=COMPOSE_DIR)


def lab_ci_overrides(path: Path) -> list[Path]:
    """The CI override, plus the lab's own for its services (ci.lab-N.override.yaml) if it has one."""
    own = COMPOSE_DIR / f"ci.{path.stem}.override.yaml"
    return [CI_OVERRIDE] + ([own] if own.exists() else [])


def test_every_compose_file_is_covered():
    covered = {p.name for p in LAB_FILES} | {"infra.yaml", CI_OVERRIDE.name}
    covered |= {o.name for p in LAB_FILES for o in lab_ci_overrides(p)}
    assert {p.name for p in COMPOSE_DIR.glob("*.y*ml")} == covered


def test_base_file_validates():
    out = compose_config(COMPOSE_DIR / "infra.yaml")
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("path", LAB_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("ci", [False, True], ids=["official-images", "ci-override"])
def test_lab_file_validates(path: Path, ci: bool):
    out = compose_config(path, *(lab_ci_overrides(path) if ci else []))
    assert out.returncode == 0, out.stderr


def test_lab1_infra_up_healthy_and_down(lab1_compose):
    lab1_compose.run("up", "-d", "--wait", "--wait-timeout", "120", "kafka", "postgres")
    ps = lab1_compose.run("ps", "--format", "{{.Service}} {{.Health}}").stdout
    assert "kafka healthy" in ps and "postgres healthy" in ps, ps
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{lab1_compose.ports['POSTGRES_PORT']}/postgres",
                         connect_timeout=5) as conn:
        assert conn.execute("SHOW wal_level").fetchone()[0] == "logical"
    kafka_roundtrip(f"127.0.0.1:{lab1_compose.ports['KAFKA_PORT']}")
    assert len(labkit_containers()) >= 2  # the override labels them for `.ci/docker.sh cleanup`
    lab1_compose.run("down", "-v", "--timeout", "5")
    assert lab1_compose.run("ps", "-aq").stdout.strip() == ""


def test_lab1_services_profile_runs_the_reference_in_containers(lab1_compose):
    """The services profile: order_api and read_model from the labkit/python image, started after
    healthy infrastructure; an order placed over HTTP reaches the read model through Kafka."""
    kafka = f"127.0.0.1:{lab1_compose.ports['KAFKA_PORT']}"
    database = f"postgresql://postgres@127.0.0.1:{lab1_compose.ports['POSTGRES_PORT']}/postgres"
    lab1_compose.run("up", "-d", "--wait", "--wait-timeout", "120", "kafka", "postgres")
    ensure_topics(kafka, {"lab1.orders": 3, "lab1.orders.dlq": 1})  # the grader's job on other runtimes
    lab1_compose.run("--profile", "services", "up", "-d", "order_api", "read_model")
    api = f"http://127.0.0.1:{lab1_compose.ports['ORDER_API_PORT']}"

    def healthy() -> bool:
        return httpx.get(f"{api}/healthz", timeout=2).status_code == 200

    try:
        wait_until(healthy, 60, "order_api /healthz in its container", ignore=(httpx.HTTPError,))
        reply = httpx.post(f"{api}/orders", json={"customer_id": "c1", "amount_cents": 1250},
                           headers={"Idempotency-Key": str(uuid.uuid4())}, timeout=10)
        assert reply.status_code == 201, reply.text

        def projected() -> bool:
            with psycopg.connect(database, connect_timeout=2) as conn:
                return conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 1

        wait_until(projected, 60, "the order in the read model", ignore=(psycopg.Error,))
    except BaseException:
        print(lab1_compose.run("--profile", "services", "logs", "--tail", "30", check=False).stdout)
        raise
