"""Invalidator (lab 3 reference): committed changes of the products table -> stale markers in Redis.

It reads the products table's changes from a logical replication slot (plugin `test_decoding`,
through SQL: peek, apply, then advance the slot), so it sees exactly the committed updates, in
commit order, whatever the catalog service did after its commit (crashed, timed out, ...).

For each changed row it writes a marker {"version": v, "stale": true} to the product's key - only
if the cache holds nothing at least as new (a Lua script compares versions). A marker is a miss
for the catalog, which then reads the row and fills the entry; the catalog's own versioned fill
cannot put an older version over it (the stale-set race).

At least once: the slot advances only after the markers are written. A crash in between re-applies
the same changes at start-up; a replayed change carries an old version and the version check turns
it into a no-op, so replays (and any late, out-of-order event) never regress the cache.
While Redis is unreachable nothing is advanced: the changes wait in the slot and are applied when it
comes back.
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

MARKER_TTL_MS = 30_000
BATCH = 500
IDLE_S = 0.05

# Write the marker unless the cache already has this version or a newer one.
INVALIDATE = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, e = pcall(cjson.decode, cur)
  if ok and type(e) == 'table' and tonumber(e['version']) and tonumber(e['version']) >= tonumber(ARGV[1]) then
    return 0
  end
end
redis.call('SET', KEYS[1], cjson.encode({version = tonumber(ARGV[1]), stale = true}), 'PX', ARGV[2])
return 1
"""
CHANGE = re.compile(r"^table public\.products: (INSERT|UPDATE|DELETE): id\[text\]:'((?:[^']|'')*)'"
                    r"(?:.* version\[integer\]:(\d+))?")


def slot_name() -> str:
    return re.sub(r"[^a-z0-9_]", "_", f"{namespace() or 'lab3'}_invalidator".lower())[:63]


def parse(data: str) -> tuple[str, str, int | None] | None:
    """("UPDATE", product id, version) from a test_decoding line, None for BEGIN/COMMIT/other tables."""
    m = CHANGE.match(data)
    if not m:
        return None
    return m.group(1), m.group(2).replace("''", "'"), int(m.group(3)) if m.group(3) else None


class Invalidator:
    def __init__(self) -> None:
        self.conn = db.connect(autocommit=True)
        create_schema(self.conn)
        self.slot = slot_name()
        if not self.conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (self.slot,)).fetchone():
            try:
                self.conn.execute("SELECT pg_create_logical_replication_slot(%s, 'test_decoding')", (self.slot,))
            except psycopg.errors.DuplicateObject:
                pass
        self.redis = redis_client(timeout=0.5, retries=2)
        self.script = self.redis.register_script(INVALIDATE)
        self.applied = 0

    def round(self) -> int:
        """Peek a batch of committed changes, write their markers, then advance the slot past them."""
        rows = self.conn.execute("SELECT lsn::text, data FROM pg_logical_slot_peek_changes(%s, NULL, %s)",
                                 (self.slot, BATCH)).fetchall()
        last_commit = None
        for lsn, data in rows:
            if data.startswith("COMMIT"):
                last_commit = lsn
                continue
            change = parse(data)
            if change is None:
                continue
            op, product_id, version = change
            self.apply(op, product_id, version)
        if last_commit:
            self.advance(last_commit)
        return len(rows)

    def apply(self, op: str, product_id: str, version: int | None) -> None:
        if op == "DELETE" or version is None:
            self.redis.delete(product_key(product_id))
        else:
            self.script(keys=[product_key(product_id)], args=[version, MARKER_TTL_MS])
        self.applied += 1

    def advance(self, lsn: str) -> None:
        self.conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (self.slot, lsn))


def main() -> None:
    stopping = install_signal_handlers()
    backoff = 0.1
    inv = None
    while not stopping.is_set():
        try:
            if inv is None:
                inv = Invalidator()
                log.info("ready: slot %s -> stale markers in Redis", inv.slot)
            if inv.round() == 0:
                stopping.wait(IDLE_S)
            backoff = 0.1
        except redis.RedisError as e:  # nothing advanced: the same changes are applied once it is back
            log.warning("redis unavailable (%s); retrying", type(e).__name__)
            stopping.wait(backoff)
            backoff = min(backoff * 2, 0.5)
        except psycopg.Error as e:
            log.warning("database unavailable (%s); reconnecting", type(e).__name__)
            if inv is not None:
                try:
                    inv.conn.close()
                except Exception:
                    pass
            inv = None
            stopping.wait(backoff)
            backoff = min(backoff * 2, 0.5)
    log.info("stopped")
