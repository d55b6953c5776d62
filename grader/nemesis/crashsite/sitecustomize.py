"""Injected by the labkit grader (see grader/nemesis/crashpoints.py).

Does nothing unless LABKIT_CRASH=<point>:<when>:<nth> is set; then counts the calls named by the
point and, at the Nth, writes LABKIT_CRASH_MARKER and SIGKILLs this process, before or after the
real call. when=stall: at the Nth call, before it, writes the marker and sleeps
LABKIT_STALL_SECONDS, then makes the call (nothing dies). when=hold: at the Nth call, before it, writes the marker and blocks the calling thread
forever (other threads - a client library's background commits - keep running; the grader kills
the process). Chains to any other sitecustomize on the path so the service's environment is as usual.
Never breaks the process: a missing library means that point simply never fires.
"""
import os


def _install(spec: str) -> None:
    import functools
    import json
    import signal
    import threading
    import time

    point, when, nth = spec.split(":")
    nth = int(nth)
    if when not in ("before", "after", "hold", "stall") or nth < 1:
        raise ValueError(spec)
    calls = [0]
    lock = threading.Lock()
    # LABKIT_CRASH_AFTER_S: only calls made that long after start count (e.g. past a replay of
    # records that were applied before the previous crash, to land on fresh work).
    counting_from = time.monotonic() + float(os.environ.get("LABKIT_CRASH_AFTER_S", "0"))

    def due() -> bool:
        if time.monotonic() < counting_from:
            return False
        with lock:  # services call from many threads; exactly one call is the Nth
            calls[0] += 1
            return calls[0] == nth

    def mark() -> None:
        marker = os.environ.get("LABKIT_CRASH_MARKER")
        if marker:  # written whole, then renamed: a reader never sees half of it
            with open(f"{marker}.{os.getpid()}.tmp", "w") as f:
                json.dump({"point": point, "when": when, "nth": nth, "pid": os.getpid(),
                           "thread": threading.current_thread().name, "time": time.time()}, f)
            os.replace(f.name, marker)

    def die() -> None:
        mark()
        os.kill(os.getpid(), signal.SIGKILL)

    def stop_here() -> None:
        """Before the call: die, or (hold) block this thread until the grader kills the process."""
        if when == "hold":
            mark()
            threading.Event().wait()
        if when == "stall":  # a slow moment, then the call goes ahead: nothing dies
            mark()
            time.sleep(float(os.environ.get("LABKIT_STALL_SECONDS", "3")))
            return
        die()

    def wrap(fn, counts=None, settle=None):
        """fn, counting the calls for which counts(*args, **kwargs) is true (all if None).
        settle(*args, **kwargs) runs after the real call, before dying, so its effect is known to be done."""
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            fire = (counts is None or counts(*args, **kwargs)) and due()
            if fire and when != "after":
                stop_here()
            result = fn(*args, **kwargs)
            if fire and when != "stall":
                if settle is not None:
                    try:
                        settle(*args, **kwargs)
                    except Exception:
                        pass
                die()
            return result
        return wrapper

    def awrap(fn, counts):
        @functools.wraps(fn)
        async def wrapper(*args, **kwargs):
            fire = counts(*args, **kwargs) and due()
            if fire and when != "after":
                stop_here()  # hold blocks the event loop's thread: the whole loop stops
            result = await fn(*args, **kwargs)
            if fire and when != "stall":
                die()
            return result
        return wrapper

    if point in ("consumer-ack", "producer-flush", "producer-produce"):
        _kafka(point, wrap)
    elif point == "db-commit":
        _psycopg(wrap, awrap, writes_only=os.environ.get("LABKIT_CRASH_WRITES") == "1")
    elif point == "amqp-ack":
        _pika(wrap)
    elif point == "slot-advance":
        _slot_advance(wrap, awrap)
    else:
        raise ValueError(spec)


def _kafka(point, wrap) -> None:
    try:
        import confluent_kafka
    except ImportError:
        return
    if point == "consumer-ack":
        base, names, serde = confluent_kafka.Consumer, ("commit", "store_offsets"), "DeserializingConsumer"
    else:
        base, names, serde = confluent_kafka.Producer, (point.split("-")[1],), "SerializingProducer"
    # Consumer/Producer are C types whose methods cannot be replaced: hand out a subclass instead.
    # (The asyncio wrappers in confluent_kafka.aio look the class up at call time, so they get it too.)
    sub = type(base.__name__, (base,), {name: wrap(getattr(base, name)) for name in names})
    sub.__module__ = base.__module__
    setattr(confluent_kafka, base.__name__, sub)
    python_class = getattr(confluent_kafka, serde, None)  # subclasses the C type directly: patch in place
    if python_class is not None:
        for name in names:
            setattr(python_class, name, wrap(getattr(python_class, name)))


def _psycopg(wrap, awrap, writes_only=False) -> None:
    """A commit is: Connection.commit() with a transaction open (also what `with connect() as conn`
    and `with pool.connection()` call on exit), or leaving an outermost `with conn.transaction()`
    block without an error. Sync and async connections alike. writes_only (LABKIT_CRASH_WRITES=1):
    only commits of transactions that changed rows count - fresh work, not a replay a consumer
    skips as a duplicate (its INSERT ... ON CONFLICT DO NOTHING changes nothing)."""
    try:
        import psycopg
        from psycopg.pq import ConnStatus, TransactionStatus
    except ImportError:
        return

    def wrote(conn) -> bool:
        return not writes_only or getattr(conn, "_labkit_wrote", False)

    def commits(conn, *args, **kwargs) -> bool:
        return (conn.pgconn.transaction_status != TransactionStatus.IDLE
                and not getattr(conn, "_num_transactions", 0) and not getattr(conn, "_tpc", None) and wrote(conn))

    def tx_commits(tx, exc_type=None, *args, **kwargs) -> bool:
        return (exc_type is None and getattr(tx, "_outer_transaction", False)
                and not getattr(tx, "force_rollback", False) and tx.pgconn.status == ConnStatus.OK
                and wrote(tx.connection))

    psycopg.Connection.commit = wrap(psycopg.Connection.commit, commits)
    psycopg.Transaction.__exit__ = wrap(psycopg.Transaction.__exit__, tx_commits)
    psycopg.AsyncConnection.commit = awrap(psycopg.AsyncConnection.commit, commits)
    psycopg.AsyncTransaction.__aexit__ = awrap(psycopg.AsyncTransaction.__aexit__, tx_commits)
    if writes_only:
        _track_writes(psycopg, TransactionStatus)


def _track_writes(psycopg, TransactionStatus) -> None:
    """Mark a connection whose open transaction changed rows (reset when a new one begins)."""
    import functools

    def starting(cursor) -> None:
        conn = cursor.connection
        if conn.pgconn.transaction_status == TransactionStatus.IDLE:
            conn._labkit_wrote = False

    def changed(cursor) -> None:
        verb = (cursor.statusmessage or "").split(" ", 1)[0]
        if verb in ("INSERT", "UPDATE", "DELETE", "MERGE", "COPY") and (cursor.rowcount or 0) > 0:
            cursor.connection._labkit_wrote = True

    for cls, name in ((psycopg.Cursor, "execute"), (psycopg.Cursor, "executemany")):
        def make(fn):
            @functools.wraps(fn)
            def tracked(cursor, *args, **kwargs):
                starting(cursor)
                result = fn(cursor, *args, **kwargs)
                changed(cursor)
                return result
            return tracked
        setattr(cls, name, make(getattr(cls, name)))
    for cls, name in ((psycopg.AsyncCursor, "execute"), (psycopg.AsyncCursor, "executemany")):
        def amake(fn):
            @functools.wraps(fn)
            async def tracked(cursor, *args, **kwargs):
                starting(cursor)
                result = await fn(cursor, *args, **kwargs)
                changed(cursor)
                return result
            return tracked
        setattr(cls, name, amake(getattr(cls, name)))


def _slot_advance(wrap, awrap) -> None:
    """An execute (psycopg 3, sync or async, also via Connection.execute) whose SQL mentions
    pg_replication_slot_advance, or a psycopg2 replication feedback with a flush position: the
    relay's acknowledgement to PostgreSQL."""
    try:
        import psycopg
    except ImportError:
        return

    def advances(cursor, query, *args, **kwargs) -> bool:
        text = query.decode(errors="replace") if isinstance(query, (bytes, bytearray)) else str(query)
        return "pg_replication_slot_advance" in text.lower()

    psycopg.Cursor.execute = wrap(psycopg.Cursor.execute, advances)
    psycopg.AsyncCursor.execute = awrap(psycopg.AsyncCursor.execute, advances)
    _replication_feedback(wrap)


def _replication_feedback(wrap) -> None:
    """The same acknowledgement over a streaming replication connection (psycopg2): a
    send_feedback that confirms a flush position (keepalive replies without one do not count)."""
    import time

    try:
        import psycopg2.extras
    except ImportError:
        return

    def confirms(cursor, *args, **kwargs) -> bool:
        names = ("write_lsn", "flush_lsn", "apply_lsn", "reply", "force")
        given = {**dict(zip(names, args)), **kwargs}
        return bool(given.get("flush_lsn"))

    def server_has_it(cursor, *args, **kwargs) -> None:
        # The feedback has no reply, and a replication socket always has unread WAL in it: closed
        # by the SIGKILL, it is reset, and the server drops the feedback still in its receive queue
        # - the slot would not move and the kill would probe nothing. So wait (bounded) until some
        # slot shows the confirmed position, read over a connection of our own.
        names = ("write_lsn", "flush_lsn", "apply_lsn", "reply", "force")
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

    cls = psycopg2.extras.ReplicationCursor  # a Python subclass of the C type: its attribute can be replaced
    cls.send_feedback = wrap(cls.send_feedback, confirms, settle=server_has_it)


def _pika(wrap) -> None:
    try:
        from pika.adapters.blocking_connection import BlockingChannel
    except ImportError:
        return

    def broker_has_it(channel, *args, **kwargs) -> None:
        # basic.ack has no reply, and a socket closed with unread input is reset, which could drop
        # an ack still in the send queue (not seen on loopback, but cheap to rule out). A synchronous
        # no-op on the same channel proves the broker processed the ack: it handles them in order.
        channel.exchange_declare("amq.direct", exchange_type="direct", passive=True)

    BlockingChannel.basic_ack = wrap(BlockingChannel.basic_ack, settle=broker_has_it)


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


if os.environ.get("LABKIT_CRASH"):
    try:
        _install(os.environ["LABKIT_CRASH"])
    except Exception as e:  # a grader bug must not take the learner's service down with it
        import sys
        print(f"labkit crashsite: not installed ({e!r})", file=sys.stderr)
_chain()
