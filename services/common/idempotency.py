"""Idempotency keys (IETF httpapi draft, Stripe semantics), stored in PostgreSQL.

A key is claimed before any side effect. Same key + same request: the first response is
replayed. Same key + different request: 422. Same key while the first is still running: 409.
A failed attempt releases the key but keeps the ids it was given, so a retry publishes the
same event again (with the same event_id) and the consumer can recognise it.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import psycopg
from fastapi.responses import JSONResponse, Response
from psycopg_pool import ConnectionPool

from services.common.http import ApiError

MAX_KEY_LENGTH = 255  # the draft leaves it open; Stripe allows 255

SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key          text PRIMARY KEY,
    fingerprint  text NOT NULL,
    state        text NOT NULL,            -- 'in_progress' | 'done' | 'released'
    resource_id  text NOT NULL,            -- the order this key stands for, kept across retries
    event_id     text NOT NULL,
    status       int,
    body         bytea,                    -- the first response's exact bytes, replayed as they were
    locked_at    timestamptz NOT NULL DEFAULT now()
);
"""


@dataclass(frozen=True)
class Claim:
    resource_id: str
    event_id: str


@dataclass(frozen=True)
class Replay:
    status: int
    body: bytes


def require_key(key: str | None) -> str:
    """The Idempotency-Key header of a POST, or 400."""
    if not key:
        raise ApiError(400, "idempotency_key_missing", "send an Idempotency-Key header with every POST")
    if len(key) > MAX_KEY_LENGTH:
        raise ApiError(400, "idempotency_key_invalid", f"an Idempotency-Key has at most {MAX_KEY_LENGTH} characters")
    return key


def fingerprint(method: str, path: str, data: Any) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{method} {path} {canonical}".encode()).hexdigest()


class IdempotencyStore:
    # A claim older than this is from a crashed attempt: a retry may take it over.
    lock_timeout = "30 seconds"

    def begin(self, conn: psycopg.Connection, key: str, fp: str) -> Claim | Replay:
        with conn.transaction():
            row = conn.execute(
                """INSERT INTO idempotency_keys (key, fingerprint, state, resource_id, event_id)
                   VALUES (%s, %s, 'in_progress', %s, %s) ON CONFLICT (key) DO NOTHING
                   RETURNING resource_id, event_id""",
                (key, fp, str(uuid.uuid4()), str(uuid.uuid4()))).fetchone()
            if row:
                return Claim(*row)
            old_fp, state, resource_id, event_id, status, body, stale = conn.execute(
                """SELECT fingerprint, state, resource_id, event_id, status, body,
                          locked_at < now() - %s::interval
                   FROM idempotency_keys WHERE key = %s FOR UPDATE""", (self.lock_timeout, key)).fetchone()
            if old_fp != fp:
                raise ApiError(422, "idempotency_key_reused",
                               "this Idempotency-Key was used for a different request")
            if state == "done":
                return Replay(status, bytes(body))
            if state == "in_progress" and not stale:
                raise ApiError(409, "request_in_progress", "a request with this Idempotency-Key is still running")
            conn.execute("UPDATE idempotency_keys SET state = 'in_progress', locked_at = now() WHERE key = %s", (key,))
            return Claim(resource_id, event_id)

    def finish(self, conn: psycopg.Connection, key: str, status: int, body: bytes) -> None:
        """Store the response to replay; in the caller's transaction (ideally the effects' own)."""
        conn.execute("UPDATE idempotency_keys SET state = 'done', status = %s, body = %s WHERE key = %s",
                     (status, body, key))

    def release(self, conn: psycopg.Connection, key: str) -> None:
        conn.execute("UPDATE idempotency_keys SET state = 'released' WHERE key = %s", (key,))


def replayed(replay: Replay) -> Response:
    """The stored first response, byte for byte, marked as a replay."""
    return Response(replay.body, replay.status, headers={"Idempotent-Replayed": "true"}, media_type="application/json")


def idempotent(pool: ConnectionPool, store: IdempotencyStore, key: str, fp: str,
               work: Callable[[Claim], tuple[int, Any]]) -> Response:
    """Claim the key, do the work once, store its response; replay it for retries.

    Three transactions: the claim, whatever `work` does, the stored response. (Lab 2's order
    service folds the last two into one, see services/order_service.)
    """
    with pool.connection() as conn:
        outcome = store.begin(conn, key, fp)
    if isinstance(outcome, Replay):
        return replayed(outcome)
    try:
        status, body = work(outcome)
    except BaseException:
        with pool.connection() as conn:
            store.release(conn, key)
        raise
    response = JSONResponse(body, status)
    with pool.connection() as conn:
        store.finish(conn, key, status, bytes(response.body))
    return response
