"""Injected by the labkit grader (see grader/nemesis/crashpoints.py).

Does nothing unless the grader set LABKIT_CRASH_CONTROL (live arming) or LABKIT_CRASH (one arm for
the whole life, from the environment). Then it intercepts the service's client calls at the
boundaries of a unit of work:

  input read    Kafka poll/consume that returned a record, a replication slot peek/get that returned
                rows or a streamed message, an AMQP delivery (basic_consume callback, basic_get,
                consume())
  effect        a psycopg COMMIT of a transaction that wrote (or a write in autocommit), a Kafka
                produce/flush, a Redis write command, script or pipeline, an AMQP publish, an HTTP
                call (httpx, requests) to anything but the span collector
  ack           a Kafka offset commit/store, a replication slot advance (SQL, or streamed feedback
                with a flush position), an AMQP ack/nack/reject

and does two things with them:
- records, per unit of work (it starts at an input read, on the reading thread; threads that never
  read input - a job pool - join the latest unit), the sequence of boundaries as this submission has
  them ("poll -> db-commit#1 -> consumer-ack#1"), into the state file LABKIT_CRASH_MARKER;
- at each interception, reads the grader's arms from LABKIT_CRASH_CONTROL (a stat per call; the file
  is re-read when it changed) and fires the one that matches: SIGKILL just before or after the call,
  a hold (the calling thread blocks for good, the grader kills the process later), or a stall (the
  thread waits, then the call goes ahead). An arm names either a unit position ("db-commit#2": the
  2nd commit of a unit of work) or a point and a count ("the 3rd db-commit from now").

Chains to any other sitecustomize on the path. Never breaks the process: a missing library means
its calls are simply not intercepted; a grader bug prints one line and leaves the service alone.
"""
import os

KINDS_READ = ("poll", "slot-read", "amqp-delivery")
KINDS_EFFECT = ("db-commit", "producer-produce", "producer-flush", "redis-write", "amqp-publish", "http-call")
KINDS_ACK = ("consumer-ack", "slot-advance", "amqp-ack")
MAX_ORDINAL = 3  # positions past the 3rd call of one kind in a unit are not told apart
MAX_SEQUENCES = 40  # distinct sequences kept per life (the state file stays small)


def _install(spec, control, state_path) -> None:
    import functools
    import json
    import signal
    import threading
    import time

    lock = threading.RLock()
    local = threading.local()
    started = time.time()
    state = {"pid": os.getpid(), "started": started, "units": 0, "fresh_units": 0, "sequences": {}, "fired": {}}
    shared = {"latest": None, "arms": [], "stat": None, "counts": {}, "written": 0.0, "dirty": False}

    # --- the grader's arms ---
    if spec:  # LABKIT_CRASH=<point>:<when>:<nth>: one arm for this life, counted from its start
        point, when, nth = spec.split(":")
        if when not in ("before", "after", "hold", "stall") or int(nth) < 1:
            raise ValueError(spec)
        static = [{"id": "env", "point": point, "when": when, "nth": int(nth),
                   "not_before": started + float(os.environ.get("LABKIT_CRASH_AFTER_S", "0")),
                   "writes_only": os.environ.get("LABKIT_CRASH_WRITES") == "1",
                   "stall_s": float(os.environ.get("LABKIT_STALL_SECONDS", "3"))}]
    else:
        static = []

    def arms() -> list:
        if not control:
            return static
        try:
            st = os.stat(control)
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            key = None
        if key != shared["stat"]:
            shared["stat"] = key
            try:
                with open(control) as f:
                    shared["arms"] = list(json.load(f).get("arms", [])) if key else []
            except (OSError, ValueError):
                shared["arms"] = []  # half-written (never: the grader renames) or gone: nothing armed
        return static + shared["arms"]

    # --- the state file: boundaries seen and arms fired ---
    def save(force: bool = False) -> None:
        if not state_path:
            return
        now = time.monotonic()
        if not force and now - shared["written"] < 1.0:
            shared["dirty"] = True
            return
        shared["written"], shared["dirty"] = now, False
        tmp = f"{state_path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "w") as f:  # whole, then renamed: a reader never sees half of it
            json.dump(state, f)
        os.replace(tmp, state_path)

    # --- units of work ---
    class Unit:
        __slots__ = ("read", "seq", "counts", "wrote", "effects")

        def __init__(self, read: str) -> None:
            self.read, self.seq, self.counts, self.wrote, self.effects = read, [read], {}, False, 0

    def finish(unit) -> None:
        if unit is None:
            return
        parts, i = [], 1
        seq = unit.seq
        while i < len(seq):  # a run of one kind past MAX_ORDINAL reads "produce#3..": batch sizes vary
            kind = seq[i].split("#")[0]
            j = i
            while j + 1 < len(seq) and seq[j + 1].split("#")[0] == kind:
                j += 1
            if j - i + 1 > MAX_ORDINAL:
                parts += seq[i:i + MAX_ORDINAL - 1] + [seq[i + MAX_ORDINAL - 1] + ".."]
            else:
                parts += seq[i:j + 1]
            i = j + 1
        text = " -> ".join([seq[0]] + parts)
        sequences = state["sequences"]
        state["units"] += 1
        state["fresh_units"] += 1 if unit.wrote else 0
        if text in sequences:
            sequences[text] += 1
            save(force=sequences[text] == 2)  # seen twice: a position the grader will rely on
        elif len(sequences) < MAX_SEQUENCES:
            sequences[text] = 1
            save(force=True)
        else:
            save()

    def read_input(kind: str) -> None:
        """An input read returned work: a new unit, unless this thread's unit has only read so far."""
        with lock:
            unit = getattr(local, "unit", None)
            if unit is not None and len(unit.seq) == 1:
                return  # consecutive reads (a batch) are one unit
            finish(unit)
            local.unit = shared["latest"] = Unit(kind)

    def current():
        return getattr(local, "unit", None) or shared["latest"]

    def position(kind: str):
        unit = current()
        if unit is None:
            return None, None
        n = unit.counts.get(kind, 0) + 1
        return unit, f"{kind}#{n}" if n <= MAX_ORDINAL else None

    def record(unit, kind: str, wrote: bool) -> None:
        if unit is None:
            return
        with lock:
            n = unit.counts[kind] = unit.counts.get(kind, 0) + 1
            unit.seq.append(f"{kind}#{n}")
            unit.wrote = unit.wrote or wrote
            if len(unit.seq) > 200:  # a unit that never ends (no input read again): keep it bounded
                del unit.seq[100:-50]

    # --- firing ---
    def matches(arm: dict, kind: str, legacy: bool, pos, fresh: bool, wrote_now: bool) -> bool:
        if str(arm["id"]) in state["fired"] or time.time() < arm.get("not_before", 0):
            return False
        if arm.get("position"):
            return pos == arm["position"] and (fresh or not arm.get("fresh"))
        if arm.get("point") != kind or not legacy or (arm.get("writes_only") and not wrote_now):
            return False
        counts = shared["counts"]
        counts[arm["id"]] = counts.get(arm["id"], 0) + 1
        return counts[arm["id"]] == arm["nth"]

    def mark(arm: dict, when: str, kind: str, pos) -> None:
        entry = {"arm": arm["id"], "point": arm.get("point") or kind, "position": pos, "when": when,
                 "nth": arm.get("nth"), "pid": os.getpid(), "thread": threading.current_thread().name,
                 "time": time.time()}
        with lock:
            state["fired"][str(arm["id"])] = entry
            state.update({k: entry[k] for k in ("point", "when", "nth", "time", "thread")})
            save(force=True)

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def choose(kind: str, legacy: bool, boundary: bool, wrote_now: bool):
        """The arm this call fires (or None), and the unit and position it has."""
        unit, pos = position(kind) if boundary else (None, None)
        current_arms = arms()
        if not current_arms:
            return None, unit, pos
        with lock:
            fresh = bool(unit is not None and (unit.wrote or wrote_now))
            for arm in current_arms:
                if matches(arm, kind, legacy, pos, fresh, wrote_now):
                    return arm, unit, pos
        return None, unit, pos

    def before_call(arm, kind, pos) -> None:
        when = arm["when"]
        if when == "after":
            return
        mark(arm, when, kind, pos)
        if when == "hold":  # this thread stops here; the others run on until the grader kills us
            threading.Event().wait()
        elif when == "stall":  # a slow moment, then the call goes ahead
            time.sleep(float(arm.get("stall_s", 3)))
        else:
            die()

    def boundary(kind: str, fn, classify=None, settle=None):
        """fn, intercepted as a boundary of `kind`. classify(*args) -> (legacy, boundary, wrote):
        whether a point-and-count arm counts this call, whether it is a unit boundary, and whether
        the transaction it ends changed rows (default: all true)."""
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                legacy, is_boundary, wrote = classify(*args, **kwargs) if classify else (True, True, True)
                arm, unit, pos = choose(kind, legacy, is_boundary, wrote) if (legacy or is_boundary) else (None, None, None)
            except Exception:  # never the service's problem
                legacy = is_boundary = wrote = False
                arm = unit = pos = None
            if arm is not None:
                before_call(arm, kind, pos)
            result = fn(*args, **kwargs)
            if is_boundary:
                record(unit, kind, wrote)
            if arm is not None and arm["when"] == "after":
                if settle is not None:
                    try:
                        settle(*args, **kwargs)
                    except Exception:
                        pass
                mark(arm, "after", kind, pos)
                die()
            return result
        return wrapper

    def aboundary(kind: str, fn, classify=None):
        @functools.wraps(fn)
        async def wrapper(*args, **kwargs):
            try:
                legacy, is_boundary, wrote = classify(*args, **kwargs) if classify else (True, True, True)
                arm, unit, pos = choose(kind, legacy, is_boundary, wrote) if (legacy or is_boundary) else (None, None, None)
            except Exception:
                legacy = is_boundary = wrote = False
                arm = unit = pos = None
            if arm is not None:
                before_call(arm, kind, pos)  # a hold blocks the event loop's thread: the whole loop stops
            result = await fn(*args, **kwargs)
            if is_boundary:
                record(unit, kind, wrote)
            if arm is not None and arm["when"] == "after":
                mark(arm, "after", kind, pos)
                die()
            return result
        return wrapper

    def reads(kind: str, fn, got):
        """fn, an input read: a unit starts when got(result) says it returned work."""
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            result = fn(*args, **kwargs)
            try:
                if got(result, *args, **kwargs):
                    read_input(kind)
            except Exception:
                pass
            return result
        return wrapper

    def areads(kind: str, fn, got):
        @functools.wraps(fn)
        async def wrapper(*args, **kwargs):
            result = await fn(*args, **kwargs)
            try:
                if got(result, *args, **kwargs):
                    read_input(kind)
            except Exception:
                pass
            return result
        return wrapper

    site = {"boundary": boundary, "aboundary": aboundary, "reads": reads, "areads": areads,
            "read_input": read_input}
    for hook in (_kafka, _psycopg, _psycopg2, _pika, _redis, _http):
        try:
            hook(site)
        except Exception as e:  # one library's surprise must not cost the others
            import sys
            print(f"labkit crashsite: {hook.__name__[1:]} not intercepted ({e!r})", file=sys.stderr)

    import atexit

    atexit.register(lambda: shared["dirty"] and save(force=True))
    save(force=True)


def _kafka(site) -> None:
    try:
        import confluent_kafka
    except ImportError:
        return
    boundary, reads = site["boundary"], site["reads"]

    def got_one(msg, *args, **kwargs) -> bool:
        return msg is not None and msg.error() is None

    def got_some(msgs, *args, **kwargs) -> bool:
        return any(m.error() is None for m in msgs or ())

    consumer_methods = {"poll": lambda fn: reads("poll", fn, got_one),
                        "consume": lambda fn: reads("poll", fn, got_some),
                        "commit": lambda fn: boundary("consumer-ack", fn),
                        "store_offsets": lambda fn: boundary("consumer-ack", fn)}
    producer_methods = {"produce": lambda fn: boundary("producer-produce", fn),
                        "flush": lambda fn: boundary("producer-flush", fn)}
    # Consumer/Producer are C types whose methods cannot be replaced: hand out a subclass instead.
    # (The asyncio wrappers in confluent_kafka.aio look the class up at call time, so they get it too.)
    for base, methods, serde in ((confluent_kafka.Consumer, consumer_methods, "DeserializingConsumer"),
                                 (confluent_kafka.Producer, producer_methods, "SerializingProducer")):
        sub = type(base.__name__, (base,), {name: wrap(getattr(base, name)) for name, wrap in methods.items()})
        sub.__module__ = base.__module__
        setattr(confluent_kafka, base.__name__, sub)
        python_class = getattr(confluent_kafka, serde, None)  # subclasses the C type directly: patch in place
        if python_class is not None:
            for name, wrap in methods.items():
                if name in vars(python_class) or name not in ("poll", "consume"):  # its own, or the C type's
                    setattr(python_class, name, wrap(getattr(python_class, name)))


WRITE_VERBS = ("INSERT", "UPDATE", "DELETE", "MERGE", "COPY")
SLOT_READS = ("pg_logical_slot_peek_changes", "pg_logical_slot_get_changes", "pg_logical_slot_peek_binary_changes",
              "pg_logical_slot_get_binary_changes")


def _psycopg(site) -> None:
    """A commit is: Connection.commit() with a transaction open (also what `with connect() as conn`
    and `with pool.connection()` call on exit), or leaving an outermost `with conn.transaction()`
    block without an error; sync and async alike. As a unit boundary only a transaction that ran a
    write statement counts (a read-only one makes nothing durable); a write in autocommit mode is
    its own commit. Point-and-count arms count every commit, as they always did (writes_only: those
    that changed rows). A statement naming pg_replication_slot_advance is a slot advance; one
    reading a slot's changes (peek/get) is an input read when it returned rows."""
    try:
        import psycopg
        from psycopg.pq import ConnStatus, TransactionStatus
    except ImportError:
        return
    import functools

    boundary, aboundary, read_input = site["boundary"], site["aboundary"], site["read_input"]

    def commits(conn, *args, **kwargs):
        open_tx = (conn.pgconn.transaction_status != TransactionStatus.IDLE
                   and not getattr(conn, "_num_transactions", 0) and not getattr(conn, "_tpc", None))
        wrote = getattr(conn, "_labkit_wrote", False)
        return open_tx, open_tx and getattr(conn, "_labkit_writes", False), wrote

    def tx_commits(tx, exc_type=None, *args, **kwargs):
        ok = (exc_type is None and getattr(tx, "_outer_transaction", False)
              and not getattr(tx, "force_rollback", False) and tx.pgconn.status == ConnStatus.OK)
        conn = tx.connection
        return ok, ok and getattr(conn, "_labkit_writes", False), getattr(conn, "_labkit_wrote", False)

    psycopg.Connection.commit = boundary("db-commit", psycopg.Connection.commit, commits)
    psycopg.Transaction.__exit__ = boundary("db-commit", psycopg.Transaction.__exit__, tx_commits)
    psycopg.AsyncConnection.commit = aboundary("db-commit", psycopg.AsyncConnection.commit, commits)
    psycopg.AsyncTransaction.__aexit__ = aboundary("db-commit", psycopg.AsyncTransaction.__aexit__, tx_commits)

    def text_of(query) -> str:
        if isinstance(query, (bytes, bytearray)):
            return query.decode(errors="replace")
        if isinstance(query, str):
            return query
        try:  # psycopg.sql.Composable
            return query.as_string(None)
        except Exception:
            return str(query)

    def advances(cursor, query, *args, **kwargs):
        hit = "pg_replication_slot_advance" in text_of(query).lower()
        return hit, hit, True

    def starting(cursor) -> None:
        conn = cursor.connection
        if conn.pgconn.transaction_status == TransactionStatus.IDLE:
            conn._labkit_wrote = conn._labkit_writes = False

    def finished(cursor, query) -> None:
        """After a statement: a write marks the transaction (a write in autocommit is a commit of its
        own); a slot read that returned rows is an input read."""
        conn = cursor.connection
        verb = (cursor.statusmessage or "").split(" ", 1)[0]
        if verb in WRITE_VERBS:
            conn._labkit_writes = True
            if (cursor.rowcount or 0) > 0:
                conn._labkit_wrote = True
        elif verb == "SELECT" and (cursor.rowcount or 0) > 0:
            text = text_of(query).lower()
            if any(name in text for name in SLOT_READS):
                read_input("slot-read")

    def autocommitted(cursor, query, *args, **kwargs):
        conn = cursor.connection
        hit = conn.autocommit and (cursor.statusmessage or "").split(" ", 1)[0] in WRITE_VERBS
        return False, hit, (cursor.rowcount or 0) > 0

    # One statement: a possible slot advance (before/after it), then the bookkeeping of what it did.
    def make(fn):
        advance = boundary("slot-advance", fn, advances)

        @functools.wraps(fn)
        def execute(cursor, query, *args, **kwargs):
            starting(cursor)
            result = advance(cursor, query, *args, **kwargs)
            finished(cursor, query)
            autocommit_write(cursor, query)
            return result
        return execute

    def amake(fn):
        advance = aboundary("slot-advance", fn, advances)

        @functools.wraps(fn)
        async def execute(cursor, query, *args, **kwargs):
            starting(cursor)
            result = await advance(cursor, query, *args, **kwargs)
            finished(cursor, query)
            autocommit_write(cursor, query)
            return result
        return execute

    # a write in autocommit mode is durable once it returns: record it as a commit (no arm fires on
    # it before the call - the statement already ran - but one placed after it does)
    autocommit_write = boundary("db-commit", lambda cursor, query: None, autocommitted)
    for cls in (psycopg.Cursor, psycopg.AsyncCursor):
        for name in ("execute", "executemany"):
            original = getattr(cls, name)
            setattr(cls, name, (amake if cls is psycopg.AsyncCursor else make)(original))


def _psycopg2(site) -> None:
    """A streaming replication connection (psycopg2): read_message() returning a message (or the
    callback of consume_stream) is an input read; a send_feedback that confirms a flush position
    is a slot advance ("after": the server is seen to have taken it)."""
    try:
        import psycopg2.extras
    except ImportError:
        return
    import functools
    import time

    boundary, reads, read_input = site["boundary"], site["reads"], site["read_input"]
    names = ("write_lsn", "flush_lsn", "apply_lsn", "reply", "force")

    def confirms(cursor, *args, **kwargs):
        hit = bool({**dict(zip(names, args)), **kwargs}.get("flush_lsn"))
        return hit, hit, True

    def server_has_it(cursor, *args, **kwargs) -> None:
        # The feedback has no reply, and a replication socket always has unread WAL in it: closed
        # by the SIGKILL, it is reset, and the server drops the feedback still in its receive queue
        # - the slot would not move and the kill would probe nothing. So wait (bounded) until some
        # slot shows the confirmed position, read over a connection of our own.
        lsn = int({**dict(zip(names, args)), **kwargs}["flush_lsn"])
        info = cursor.connection.info
        with psycopg2.connect(host=info.host, port=info.port, user=info.user, password=info.password,
                              dbname=info.dbname, connect_timeout=3) as conn, conn.cursor() as check:
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                check.execute("SELECT 1 FROM pg_replication_slots WHERE confirmed_flush_lsn >= %s::pg_lsn",
                              (f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}",))
                if check.fetchone():
                    return
                time.sleep(0.02)

    cls = psycopg2.extras.ReplicationCursor  # a Python subclass of the C type: its attributes can be replaced
    cls.send_feedback = boundary("slot-advance", cls.send_feedback, confirms, settle=server_has_it)
    cls.read_message = reads("slot-read", cls.read_message, lambda msg, *a, **k: msg is not None)
    consume_stream = cls.consume_stream

    @functools.wraps(consume_stream)
    def consume(cursor, consume, *args, **kwargs):
        def each(msg):
            read_input("slot-read")
            return consume(msg)
        return consume_stream(cursor, each, *args, **kwargs)
    cls.consume_stream = consume


def _pika(site) -> None:
    """pika's BlockingConnection: a delivery to a basic_consume callback, a basic_get or a consume()
    item is an input read; basic_publish an effect; basic_ack/nack/reject an ack."""
    try:
        from pika.adapters.blocking_connection import BlockingChannel
    except ImportError:
        return
    import functools

    boundary, reads, read_input = site["boundary"], site["reads"], site["read_input"]

    def broker_has_it(channel, *args, **kwargs) -> None:
        # basic.ack has no reply, and a socket closed with unread input is reset, which could drop
        # an ack still in the send queue (not seen on loopback, but cheap to rule out). A synchronous
        # no-op on the same channel proves the broker processed the ack: it handles them in order.
        channel.exchange_declare("amq.direct", exchange_type="direct", passive=True)

    for name in ("basic_ack", "basic_nack", "basic_reject"):
        setattr(BlockingChannel, name, boundary("amqp-ack", getattr(BlockingChannel, name), settle=broker_has_it))
    BlockingChannel.basic_publish = boundary("amqp-publish", BlockingChannel.basic_publish)
    BlockingChannel.basic_get = reads("amqp-delivery", BlockingChannel.basic_get,
                                      lambda result, *a, **k: result is not None and result[0] is not None)
    original_consume = BlockingChannel.basic_consume

    @functools.wraps(original_consume)
    def basic_consume(channel, queue, on_message_callback, *args, **kwargs):
        @functools.wraps(on_message_callback)
        def delivered(*cb_args, **cb_kwargs):
            read_input("amqp-delivery")
            return on_message_callback(*cb_args, **cb_kwargs)
        return original_consume(channel, queue, delivered, *args, **kwargs)
    BlockingChannel.basic_consume = basic_consume
    original_items = BlockingChannel.consume

    @functools.wraps(original_items)
    def consume(channel, *args, **kwargs):
        for item in original_items(channel, *args, **kwargs):
            if item is not None and item[0] is not None:
                read_input("amqp-delivery")
            yield item
    BlockingChannel.consume = consume


REDIS_WRITES = {"SET", "SETEX", "PSETEX", "SETNX", "MSET", "MSETNX", "GETSET", "GETDEL", "GETEX", "DEL", "UNLINK",
                "EXPIRE", "PEXPIRE", "EXPIREAT", "PEXPIREAT", "PERSIST", "INCR", "INCRBY", "INCRBYFLOAT", "DECR",
                "DECRBY", "APPEND", "HSET", "HSETNX", "HMSET", "HDEL", "HINCRBY", "LPUSH", "RPUSH", "LPOP", "RPOP",
                "LREM", "LSET", "SADD", "SREM", "SPOP", "ZADD", "ZREM", "ZINCRBY", "XADD", "XDEL", "EVAL",
                "EVALSHA", "EVAL_RO", "FCALL", "RENAME", "COPY", "PUBLISH", "FLUSHDB", "FLUSHALL"}


def _redis(site) -> None:
    """redis-py (sync): a write command, script call or a pipeline holding one is an effect."""
    try:
        import redis
        from redis.client import Pipeline
    except ImportError:
        return
    boundary = site["boundary"]

    def writes(client, *args, **kwargs):
        hit = (not isinstance(client, Pipeline) and bool(args)
               and str(args[0]).split(" ", 1)[0].upper() in REDIS_WRITES)
        return hit, hit, True

    def pipeline_writes(pipe, *args, **kwargs):
        hit = any(str(cmd[0][0]).split(" ", 1)[0].upper() in REDIS_WRITES for cmd in pipe.command_stack)
        return hit, hit, True

    redis.Redis.execute_command = boundary("redis-write", redis.Redis.execute_command, writes)
    Pipeline.execute = boundary("redis-write", Pipeline.execute, pipeline_writes)


def _http(site) -> None:
    """An outgoing HTTP call (httpx, requests) to anything but the span collector is an effect
    (e.g. a payment gateway)."""
    boundary, aboundary = site["boundary"], site["aboundary"]
    collector = tuple(v.rstrip("/") for k, v in os.environ.items()
                      if k.startswith("OTEL_EXPORTER_OTLP") and k.endswith("ENDPOINT") and v)

    def calls(client, request, *args, **kwargs):
        hit = not str(getattr(request, "url", "")).startswith(collector) if collector else True
        return hit, hit, True

    try:
        import httpx
    except ImportError:
        httpx = None
    if httpx is not None:
        httpx.Client.send = boundary("http-call", httpx.Client.send, calls)
        httpx.AsyncClient.send = aboundary("http-call", httpx.AsyncClient.send, calls)
    try:
        import requests
    except ImportError:
        return
    requests.Session.send = boundary("http-call", requests.Session.send, calls)


def _chain() -> None:
    """Run the next sitecustomize on sys.path, as if we were not here."""
    import importlib.machinery
    import importlib.util
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec and spec.loader:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


if os.environ.get("LABKIT_CRASH") or os.environ.get("LABKIT_CRASH_CONTROL"):
    try:
        _install(os.environ.get("LABKIT_CRASH"), os.environ.get("LABKIT_CRASH_CONTROL"),
                 os.environ.get("LABKIT_CRASH_MARKER"))
    except Exception as e:  # a grader bug must not take the learner's service down with it
        import sys
        print(f"labkit crashsite: not installed ({e!r})", file=sys.stderr)
_chain()
