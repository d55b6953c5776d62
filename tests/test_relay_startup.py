"""The reference relay's start-up survives PostgreSQL going away under it (a real private server;
the first connection's backend is terminated by the server, as a restart does)."""
from __future__ import annotations

import psycopg
import pytest

from grader.stack import make_stack
from services.cdc_relay import relay


@pytest.fixture(scope="module")
def database_url():
    with make_stack(["postgres"], "native") as stack:
        yield stack.url("postgres")


def test_start_up_is_tried_again_after_the_server_dropped_the_connection(database_url, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("LAB_NAMESPACE", "startup")
    real_connect, calls = relay.db.connect, []

    def connect(**kwargs):
        conn = real_connect(**kwargs)
        calls.append(conn)
        if len(calls) == 1:  # the server ends this backend before the relay uses it
            with psycopg.connect(database_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        return conn

    monkeypatch.setattr(relay.db, "connect", connect)
    conn, (slot, publication) = relay.Relay.prepare()
    with conn:
        assert len(calls) == 2 and calls[0].closed
        assert conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
        assert conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,)).fetchone()


def test_start_up_gives_up_after_its_attempts(database_url, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("LAB_NAMESPACE", "startup")
    real_connect = relay.db.connect

    def connect(**kwargs):
        conn = real_connect(**kwargs)
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        return conn

    monkeypatch.setattr(relay.db, "connect", connect)
    with pytest.raises(psycopg.OperationalError):
        relay.Relay.prepare(attempts=2)
