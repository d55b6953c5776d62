"""A decoder for PostgreSQL's `pgoutput` logical replication messages (protocol version 1).

pgoutput is the plugin built into PostgreSQL (the one Debezium and PostgreSQL's own subscriptions
use). Each change comes as one binary message; the relay only needs four of them:
  B  Begin     a transaction starts (its commit LSN and commit time)
  R  Relation  the columns of a table, sent before that table's first row in a decoding session
  I  Insert    one new row, each column as text
  C  Commit    the transaction ends (its end LSN: where a reader may safely continue)
Everything else (Update, Delete, Truncate, Type, Origin, Message) is skipped: the outbox is insert-only.
Format: https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

PG_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)  # PostgreSQL timestamps count µs from here


@dataclass
class Begin:
    final_lsn: int
    commit_time: datetime
    xid: int


@dataclass
class Commit:
    commit_lsn: int
    end_lsn: int
    commit_time: datetime


@dataclass
class Insert:
    table: str                      # "schema.table"
    row: dict[str, str | None]      # column -> text value (None for NULL)


@dataclass
class Decoder:
    """Stateful: remembers Relation messages so that Insert messages can name their columns."""

    relations: dict[int, tuple[str, list[str]]] = field(default_factory=dict)

    def decode(self, data: bytes) -> Begin | Commit | Insert | None:
        kind = data[:1]
        if kind == b"B":
            final_lsn, ts, xid = struct.unpack_from("!QqI", data, 1)
            return Begin(final_lsn, _time(ts), xid)
        if kind == b"C":
            _flags, commit_lsn, end_lsn, ts = struct.unpack_from("!bQQq", data, 1)
            return Commit(commit_lsn, end_lsn, _time(ts))
        if kind == b"R":
            self._relation(data)
            return None
        if kind == b"I":
            (oid,) = struct.unpack_from("!I", data, 1)
            table, columns = self.relations[oid]
            values = _tuple(data, 6)  # after kind, oid and the 'N' (new tuple) marker
            return Insert(table, dict(zip(columns, values)))
        return None  # U, D, T, Y, O, M: not used by an insert-only outbox

    def _relation(self, data: bytes) -> None:
        (oid,) = struct.unpack_from("!I", data, 1)
        pos = 5
        namespace, pos = _cstring(data, pos)
        name, pos = _cstring(data, pos)
        pos += 1  # replica identity setting
        (ncols,) = struct.unpack_from("!h", data, pos)
        pos += 2
        columns = []
        for _ in range(ncols):
            pos += 1  # flags (part of the key or not)
            column, pos = _cstring(data, pos)
            pos += 8  # type oid, type modifier
            columns.append(column)
        self.relations[oid] = (f"{namespace}.{name}", columns)


def _cstring(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(b"\x00", pos)
    return data[pos:end].decode(), end + 1


def _tuple(data: bytes, pos: int) -> list[str | None]:
    (ncols,) = struct.unpack_from("!h", data, pos)
    pos += 2
    values: list[str | None] = []
    for _ in range(ncols):
        kind = data[pos:pos + 1]
        pos += 1
        if kind == b"t":
            (length,) = struct.unpack_from("!i", data, pos)
            values.append(data[pos + 4:pos + 4 + length].decode())
            pos += 4 + length
        else:  # 'n' NULL, 'u' unchanged TOASTed value (never on an insert)
            values.append(None)
    return values


def _time(micros: int) -> datetime:
    return PG_EPOCH + timedelta(microseconds=micros)


def lsn_to_int(lsn: str) -> int:
    """'16/B374D848' -> an integer (LSNs are 64-bit byte positions in the WAL)."""
    high, low = lsn.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def int_to_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"
