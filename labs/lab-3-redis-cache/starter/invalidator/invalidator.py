"""Invalidator - lab 3 starter: the products table's committed changes -> the cache.

It reads the changes from a logical replication slot (plugin test_decoding, through SQL) and
deletes the changed products' cache entries. README: "Invalidation from change events".
"""
from __future__ import annotations

import re

import psycopg
import redis

from services.common import db
from services.common.cache import create_schema, namespace, product_key, redis_client
from services.common.lifecycle import install_signal_handlers
from services.common.log import get_logger

log = get_logger("invalidator")

CHANGE = re.compile(r"^table public\.products: (INSERT|UPDATE|DELETE): id\[text\]:'((?:[^']|'')*)'"
                    r"(?:.* version\[integer\]:(\d+))?")


def slot_name() -> str:
    return re.sub(r"[^a-z0-9_]", "_", f"{namespace() or 'lab3'}_invalidator".lower())[:63]


class Invalidator:
    def __init__(self) -> None:
        self.conn = db.connect(autocommit=True)
        create_schema(self.conn)
        self.slot = slot_name()
        if not self.conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (self.slot,)).fetchone():
            self.conn.execute("SELECT pg_create_logical_replication_slot(%s, 'test_decoding')", (self.slot,))
        self.redis = redis_client(timeout=0.5)

    def round(self) -> int:
        # TODO(lab3-5): pg_logical_slot_get_changes CONSUMES the changes: a crash (or a Redis error)
        #               before they are applied loses them. Peek (pg_logical_slot_peek_changes), apply,
        #               then advance (pg_replication_slot_advance to the last COMMIT's lsn).
        rows = self.conn.execute("SELECT lsn::text, data FROM pg_logical_slot_get_changes(%s, NULL, 500)",
                                 (self.slot,)).fetchall()
        for _, data in rows:
            m = CHANGE.match(data)
            if m:
                # TODO(lab3-4): write a marker {"version": v, "stale": true} unless the cache holds
                #               version v or newer (a Lua script): a DEL lets a slow miss put an old
                #               row back, and a replayed change must never regress the cache.
                self.redis.delete(product_key(m.group(2).replace("''", "'")))
        return len(rows)


def main() -> None:
    stopping = install_signal_handlers()
    inv = None
    while not stopping.is_set():
        try:
            if inv is None:
                inv = Invalidator()
                log.info("ready: slot %s", inv.slot)
            if inv.round() == 0:
                stopping.wait(0.05)
        except (redis.RedisError, psycopg.Error) as e:
            log.warning("%s; retrying", type(e).__name__)
            inv = None
            stopping.wait(0.2)
