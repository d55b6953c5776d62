"""Per-run credentials on the native runtime: one run's services cannot reach another run's data."""
from __future__ import annotations

from urllib.parse import urlsplit

import pika
import psycopg
import pytest
import redis
from psycopg.conninfo import conninfo_to_dict

from grader.stack.credentials import with_credentials


@pytest.fixture
def two_runs(native_stack):
    a, b = native_stack.namespace(prefix="a"), native_stack.namespace(prefix="b")
    yield a, b
    a.drop()
    b.drop()


def port(url: str) -> int:
    return urlsplit(url).port


def test_env_carries_the_run_s_own_credentials_never_the_admin_s(native_stack, two_runs):
    a, _ = two_runs
    env = a.env()
    admin = {native_stack.url(k) for k in ("postgres", "redis", "rabbitmq")}
    assert not admin & set(env.values())
    assert urlsplit(env["DATABASE_URL"]).username == a.name
    assert urlsplit(env["REDIS_URL"]).username == a.name
    assert urlsplit(env["AMQP_URL"]).path == f"/{a.name}"
    assert all(urlsplit(env[v]).hostname == "127.0.0.1" for v in ("DATABASE_URL", "REDIS_URL", "AMQP_URL"))


# --- PostgreSQL ---

def test_postgres_has_no_trust_left(native_stack):
    p = port(native_stack.url("postgres"))
    for url in (f"postgresql://postgres@127.0.0.1:{p}/postgres",
                f"postgresql://postgres:wrong@127.0.0.1:{p}/postgres"):
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(url, connect_timeout=5).close()


def test_postgres_role_works_in_its_own_database(two_runs):
    a, _ = two_runs
    with psycopg.connect(a.env()["DATABASE_URL"], autocommit=True, connect_timeout=5) as conn:
        conn.execute("CREATE TABLE orders (id int primary key)")
        conn.execute("INSERT INTO orders VALUES (1)")
        conn.execute("CREATE PUBLICATION orders_pub FOR TABLE orders")
        conn.execute("SELECT pg_create_logical_replication_slot('own_slot', 'pgoutput')")  # CDC labs (lab 2)
        conn.execute("INSERT INTO orders VALUES (2)")
        conn.execute("SELECT pg_logical_emit_message(true, 'heartbeat', '')")
        changes = conn.execute("SELECT count(*) FROM pg_logical_slot_peek_binary_changes('own_slot', NULL, NULL, "
                               "'proto_version', '1', 'publication_names', 'orders_pub')").fetchone()[0]
        assert changes > 0
        conn.execute("SELECT pg_replication_slot_advance('own_slot', pg_current_wal_lsn())")
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 2
        assert not conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]


def test_postgres_role_cannot_enter_another_run_s_database(two_runs):
    a, b = two_runs
    with psycopg.connect(b.service_url("postgres"), autocommit=True) as conn:  # the grader's view of run b
        conn.execute("CREATE TABLE secrets (v text)")
    a_url = a.env()["DATABASE_URL"]
    for db in (b.name, "postgres"):
        with pytest.raises(psycopg.OperationalError, match="no pg_hba.conf entry|permission denied"):
            psycopg.connect(a_url.rsplit("/", 1)[0] + f"/{db}", connect_timeout=5).close()
    # b's role with a's password (the URL pattern of another namespace) fails too.
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(with_credentials(a_url, b.name, a.password, path=f"/{b.name}"), connect_timeout=5).close()


def test_the_grader_s_reader_reads_its_run_only_and_writes_nothing(native_stack, two_runs):
    a, b = two_runs
    with psycopg.connect(a.service_url("postgres"), autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int primary key)")
        conn.execute("INSERT INTO orders VALUES (1)")
        conn.execute("CREATE SCHEMA read_model")
        conn.execute("CREATE TABLE read_model.orders (id int)")
        conn.execute("SELECT pg_create_logical_replication_slot('a_slot', 'test_decoding')")
    reader = a.reader_url
    assert urlsplit(reader).username == f"{a.name}_grader"
    with psycopg.connect(reader, autocommit=True) as conn:
        assert conn.execute("SHOW search_path").fetchone()[0].replace(" ", "") == "pg_catalog,pg_temp"
        assert conn.execute("SELECT count(*) FROM public.orders").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM read_model.orders").fetchone()[0] == 0
        assert conn.execute("SELECT slot_name FROM pg_replication_slots WHERE database = current_database()"
                            ).fetchall() == [("a_slot",)]  # lab 2's slot observations
        conn.execute("SELECT pg_current_wal_lsn()")
        assert conn.execute("SELECT rolsuper OR rolcreaterole OR rolcreatedb OR rolreplication OR rolbypassrls "
                            "FROM pg_roles WHERE rolname = current_user").fetchone() == (False,)
        for statement in ("INSERT INTO public.orders VALUES (2)", "UPDATE public.orders SET id = 3",
                          "SET default_transaction_read_only = off; INSERT INTO public.orders VALUES (2)",
                          "CREATE TABLE public.x (i int)", "CREATE TEMP TABLE t (i int)",
                          "SET default_transaction_read_only = off; CREATE TEMP TABLE t (i int)",
                          "CREATE SCHEMA mine", "SELECT rolpassword FROM pg_authid",
                          "COPY (SELECT 1) TO PROGRAM 'true'", "SELECT pg_drop_replication_slot('a_slot')"):
            with pytest.raises(psycopg.Error):
                conn.execute(statement)
            conn.execute("RESET default_transaction_read_only")
    for db in (b.name, "postgres", "template1"):
        with pytest.raises(psycopg.OperationalError, match="permission denied|pg_hba.conf rejects"):
            psycopg.connect(with_credentials(reader, f"{a.name}_grader", a.reader_password, path=f"/{db}"),
                            connect_timeout=5).close()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):  # b's reader, a's password
        psycopg.connect(with_credentials(reader, f"{b.name}_grader", a.reader_password, path=f"/{b.name}"),
                        connect_timeout=5).close()


def test_the_run_s_redis_reader_reads_its_keys_only(native_stack, two_runs):
    a, b = two_runs
    redis.Redis.from_url(a.service_url("redis"), socket_timeout=5).set(a.key("k"), "v")
    redis.Redis.from_url(b.service_url("redis"), socket_timeout=5).set(b.key("k"), "w")
    reader = redis.Redis.from_url(a.reader_url_for("redis"), socket_timeout=5)
    assert reader.get(a.key("k")) == b"v"
    for command in (("GET", b.key("k")), ("SET", a.key("k"), "x"), ("EVAL", "return 1", "0"), ("KEYS", "*"),
                    ("PUBLISH", a.key("c"), "x"), ("CONFIG", "GET", "*"), ("ACL", "LIST")):
        with pytest.raises(redis.ResponseError, match="permission"):
            reader.execute_command(*command)


# --- Redis ---

def test_redis_needs_a_password(native_stack):
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port(native_stack.url("redis")), socket_timeout=5).get("x")


def test_redis_user_is_limited_to_its_prefix(two_runs):
    a, b = two_runs
    ra = redis.Redis.from_url(a.env()["REDIS_URL"], socket_timeout=5)
    rb = redis.Redis.from_url(b.env()["REDIS_URL"], socket_timeout=5)
    rb.set(b.key("balance"), 100)
    assert ra.set(a.key("lock"), "me", nx=True, px=5000)
    assert ra.set(a.key("lock"), "other", nx=True, px=5000) is None
    with pytest.raises(redis.exceptions.NoPermissionError):
        ra.get(b.key("balance"))
    with pytest.raises(redis.exceptions.NoPermissionError):
        ra.set(b.key("balance"), 0)
    for command in (("FLUSHALL",), ("KEYS", "*"), ("CONFIG", "GET", "requirepass"), ("ACL", "LIST")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            ra.execute_command(*command)
    assert rb.get(b.key("balance")) == b"100"


def test_redis_scripts_transactions_and_pubsub_work_within_the_prefix(two_runs):
    a, b = two_runs
    ra = redis.Redis.from_url(a.env()["REDIS_URL"], socket_timeout=5)
    incr = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
    assert ra.eval(incr, 1, a.key("n"), 5) == 5
    with pytest.raises(redis.exceptions.ResponseError):  # a script runs with the caller's ACL
        ra.eval(incr, 1, b.key("n"), 5)
    with ra.pipeline() as pipe:  # WATCH / MULTI / EXEC
        pipe.watch(a.key("n"))
        pipe.multi()
        pipe.incr(a.key("n"))
        assert pipe.execute() == [6]
    sub = ra.pubsub()
    sub.subscribe(a.key("events"))
    with pytest.raises(redis.exceptions.NoPermissionError):
        ra.publish(b.key("events"), "x")
    sub.close()


# --- RabbitMQ ---

def amqp(url: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(url + "?connection_attempts=1&socket_timeout=5"))


def test_rabbitmq_guest_is_gone(native_stack):
    with pytest.raises(pika.exceptions.AMQPError):
        amqp(f"amqp://guest:guest@127.0.0.1:{port(native_stack.url('rabbitmq'))}/%2F").close()


def test_rabbitmq_user_is_limited_to_its_vhost(two_runs):
    a, b = two_runs
    conn = amqp(a.env()["AMQP_URL"])
    conn.channel().queue_declare(a.queue("jobs"), durable=True)
    conn.close()
    other = with_credentials(a.env()["AMQP_URL"], a.name, a.password, path=f"/{b.name}")
    with pytest.raises(pika.exceptions.AMQPError):
        amqp(other).close()
    with pytest.raises(pika.exceptions.AMQPError):
        amqp(with_credentials(a.env()["AMQP_URL"], a.name, a.password, path="/%2F")).close()


def test_drop_removes_the_run_s_users(native_stack):
    ns = native_stack.namespace(prefix="gone")
    env = ns.env()
    ns.drop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(env["DATABASE_URL"], connect_timeout=5).close()
    with pytest.raises((redis.AuthenticationError, redis.exceptions.ResponseError)):
        redis.Redis.from_url(env["REDIS_URL"], socket_timeout=5).ping()
    with pytest.raises(pika.exceptions.AMQPError):
        amqp(env["AMQP_URL"]).close()


def test_credentials_are_quoted_into_urls():
    url = with_credentials("postgresql://postgres@127.0.0.1:5432/postgres", "run_1", "p@ss:w/rd", path="/run_1")
    parts = urlsplit(url)
    assert (parts.hostname, parts.port, parts.path) == ("127.0.0.1", 5432, "/run_1")
    assert parts.username == "run_1" and parts.password == "p%40ss%3Aw%2Frd"
    assert conninfo_to_dict(url)["password"] == "p@ss:w/rd"  # what libpq makes of it


def test_a_run_cannot_hold_locks_forever(two_runs):
    a, _ = two_runs
    with psycopg.connect(a.env()["DATABASE_URL"], connect_timeout=5) as conn:
        settings = dict(conn.execute("SELECT name, setting FROM pg_settings WHERE name IN "
                                     "('statement_timeout', 'idle_in_transaction_session_timeout')").fetchall())
    assert settings == {"statement_timeout": "60000", "idle_in_transaction_session_timeout": "60000"}
