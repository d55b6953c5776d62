"""Per-run credentials: each Namespace gets a PostgreSQL role and database, a Redis ACL user and a
RabbitMQ user and vhost of its own, so one run's services cannot read or write another run's data.

The grader keeps the admin URLs (`Stack.url`); a run's services only ever see the URLs built here
(`Namespace.env()`). Kafka has no equivalent: Tansu has no ACLs, so topics are separated only by
the `<namespace>.` prefix (see grader/sandbox/README.md, "What stays reachable").

What each service may do with its own credentials:
- PostgreSQL: a LOGIN role with a scram password, owner of a database of the same name (so it can
  create tables and publications there), REPLICATION so CDC labs can create logical slots (only in a
  database it may connect to: CONNECT is revoked from PUBLIC), at most 64 connections, statements
  and idle transactions of at most 60 s (so a held lock cannot hang the grader's reads). pg_hba lets a
  role into its own database only (`sameuser`), and admits no replication-protocol connections.
- Redis: keys and pub/sub channels matching `<namespace>:*`; every command except @dangerous ones
  (FLUSHALL, KEYS, CONFIG, DEBUG, CLIENT KILL, MONITOR, ...). Lua scripts, SET NX PX, WATCH/MULTI
  and pub/sub work; a script touching another prefix is refused.
- RabbitMQ: a user with full rights on its own vhost `<namespace>` and nothing else.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import tempfile
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit, urlunsplit

if TYPE_CHECKING:
    from .base import Server

POSTGRES_CONNECTION_LIMIT = 64
# A run cannot hold locks forever (LOCK TABLE and sleep, or a transaction left open): the grader's
# own reads would wait behind it. Generous for a lab, short for a hang.
POSTGRES_ROLE_SETTINGS = {"statement_timeout": "60s", "idle_in_transaction_session_timeout": "60s"}
# Commands a run's Redis user may not call: @dangerous covers FLUSHALL/FLUSHDB, KEYS, CONFIG,
# DEBUG, SHUTDOWN, CLIENT, MONITOR, ACL, SWAPDB, MIGRATE, ...
REDIS_RULES = ("+@all", "-@dangerous")


def new_password() -> str:
    return secrets.token_urlsafe(18)  # URL-safe: goes into URLs unquoted


def with_credentials(url: str, user: str, password: str, path: str | None = None) -> str:
    """`url` with user:password (and optionally a new path) in place of whatever it had."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc, path=parts.path if path is None else path))


# --- PostgreSQL -----------------------------------------------------------------------------------

def postgres_hba() -> str:
    """pg_hba.conf for servers the kit starts: passwords everywhere, each role into its own database."""
    return ("# labkit: no trust; the superuser by password, every other role only into its own database\n"
            "local   all       postgres                 scram-sha-256\n"
            "host    all       postgres  127.0.0.1/32   scram-sha-256\n"
            "host    sameuser  all       127.0.0.1/32   scram-sha-256\n")


def provision_postgres(admin_url: str, name: str, password: str) -> str:
    import psycopg
    from psycopg import sql

    role, db = sql.Identifier(name), sql.Identifier(name)
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        try:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(sql.SQL(verb + " ROLE {} LOGIN REPLICATION CONNECTION LIMIT {} PASSWORD {}").format(
                role, sql.Literal(POSTGRES_CONNECTION_LIMIT), sql.Literal(password)))
            for setting, value in POSTGRES_ROLE_SETTINGS.items():
                conn.execute(sql.SQL("ALTER ROLE {} SET {} = {}").format(role, sql.Identifier(setting),
                                                                         sql.Literal(value)))
            owned = True
        except psycopg.errors.InsufficientPrivilege:  # an external server given without superuser
            owned = False
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            if owned:
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(db, role))
            else:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(db))
        if not owned:
            return with_database(admin_url, name)
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db))
    return with_credentials(admin_url, name, password, path="/" + name)


def drop_postgres(admin_url: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        for (slot,) in conn.execute("SELECT slot_name FROM pg_replication_slots WHERE database = %s",
                                    (name,)).fetchall():
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        try:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
        except psycopg.errors.InsufficientPrivilege:
            pass


def with_database(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


# --- Redis ----------------------------------------------------------------------------------------

def provision_redis(admin_url: str, name: str, password: str) -> str | None:
    import redis

    client = redis.Redis.from_url(admin_url, socket_timeout=10)
    try:
        client.execute_command("ACL", "SETUSER", name, "reset", "on", f">{password}", f"~{name}:*",
                               "resetchannels", f"&{name}:*", *REDIS_RULES)
    except redis.ResponseError:  # a server without ACLs (< 6) or an external one we may not manage
        return None
    finally:
        client.close()
    return with_credentials(admin_url, name, password)


def drop_redis(admin_url: str, name: str) -> None:
    import redis

    client = redis.Redis.from_url(admin_url, socket_timeout=10)
    try:
        try:
            client.execute_command("ACL", "DELUSER", name)  # also closes its connections
        except redis.ResponseError:
            pass  # never provisioned (no ACLs here)
        cursor = 0
        while True:  # SCAN, not KEYS: never block the server for other runs
            cursor, keys = client.scan(cursor, match=f"{name}:*", count=1000)
            if keys:
                client.delete(*keys)
            if cursor == 0:
                break
    finally:
        client.close()


# --- RabbitMQ -------------------------------------------------------------------------------------

def rabbitmq_password_hash(password: str) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def rabbitmq_definitions(users: dict[str, tuple[str, str]], vhosts: list[str],
                         permissions: list[tuple[str, str]]) -> dict:
    """Definitions for `rabbitmqctl import_definitions`: users {name: (password, tags)},
    vhosts, and full permissions [(user, vhost)]. One call creates them all (each rabbitmqctl
    call boots an Erlang VM, ~1 s)."""
    return {
        "users": [{"name": u, "password_hash": rabbitmq_password_hash(p), "tags": tags,
                   "hashing_algorithm": "rabbit_password_hashing_sha256"} for u, (p, tags) in users.items()],
        "vhosts": [{"name": v} for v in vhosts],
        "permissions": [{"user": u, "vhost": v, "configure": ".*", "write": ".*", "read": ".*"}
                        for u, v in permissions],
    }


def import_rabbitmq_definitions(server: "Server", definitions: dict) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="labkit-rabbitmq-", delete=False) as f:
        json.dump(definitions, f)
    try:
        server.rabbitmqctl("import_definitions", f.name)  # type: ignore[attr-defined]
    finally:
        os.unlink(f.name)


def provision_rabbitmq(server: "Server", name: str, password: str) -> str | None:
    if not hasattr(server, "rabbitmqctl"):
        return None  # this runtime cannot manage users: services share the admin URL (documented)
    import_rabbitmq_definitions(server, rabbitmq_definitions({name: (password, "")}, [name], [(name, name)]))
    return with_credentials(server.url, name, password, path="/" + name)


def drop_rabbitmq(server: "Server", name: str) -> None:
    if hasattr(server, "rabbitmqctl"):
        server.rabbitmqctl("delete_vhost", name)  # type: ignore[attr-defined]  # also its queues
        server.rabbitmqctl("delete_user", name)  # type: ignore[attr-defined]  # also closes its connections


# --- one entry point per direction ----------------------------------------------------------------

def provision(kind: str, server: "Server", name: str, password: str) -> str | None:
    """Create `name`'s own credentials on `server`; the URL its services use, or None when this kind
    or runtime has none (Kafka; RabbitMQ where users cannot be managed)."""
    if kind == "postgres":
        return provision_postgres(server.url, name, password)
    if kind == "redis":
        return provision_redis(server.url, name, password)
    if kind == "rabbitmq":
        return provision_rabbitmq(server, name, password)
    return None


def drop(kind: str, server: "Server", name: str) -> None:
    if kind == "postgres":
        drop_postgres(server.url, name)
    elif kind == "redis":
        drop_redis(server.url, name)
    elif kind == "rabbitmq":
        drop_rabbitmq(server, name)
