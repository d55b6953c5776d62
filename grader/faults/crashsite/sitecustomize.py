"""Injected by the labkit grader (see grader/faults/crashpoints.py). Does nothing unless
LABKIT_CRASH is set; then SIGKILLs this process at the named call. Chains to any other
sitecustomize on the path so the learner's environment behaves as usual."""
import os


def _install(spec: str) -> None:
    import functools
    import json
    import signal
    import threading

    point, when, nth = spec.split(":")
    nth = int(nth)
    count = [0]
    lock = threading.Lock()

    def die() -> None:
        marker = os.environ.get("LABKIT_CRASH_MARKER")
        if marker:
            with open(marker, "w") as f:
                json.dump({"point": point, "when": when, "nth": nth, "pid": os.getpid()}, f)
        os.kill(os.getpid(), signal.SIGKILL)

    def wrap(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with lock:
                count[0] += 1
                due = count[0] == nth
            if due and when == "before":
                die()
            result = fn(*args, **kwargs)
            if due and when == "after":
                die()
            return result
        return wrapper

    if point in ("consumer-ack", "producer-flush", "producer-produce"):
        try:
            import confluent_kafka
        except ImportError:
            return
        if point == "consumer-ack":
            base = confluent_kafka.Consumer  # a C type: methods cannot be patched, so subclass it
            confluent_kafka.Consumer = type("Consumer", (base,), {
                "commit": wrap(base.commit), "store_offsets": wrap(base.store_offsets)})
        else:
            base = confluent_kafka.Producer
            name = point.split("-")[1]
            confluent_kafka.Producer = type("Producer", (base,), {name: wrap(getattr(base, name))})
    elif point == "db-commit":
        try:
            import psycopg
        except ImportError:
            return
        psycopg.Connection.commit = wrap(psycopg.Connection.commit)
        exit_conn = psycopg.Connection.__exit__

        def conn_exit(self, exc_type, *rest):
            if exc_type is None and not self.closed and not self.autocommit:
                return wrap_once(lambda: exit_conn(self, exc_type, *rest))
            return exit_conn(self, exc_type, *rest)

        exit_tx = psycopg.Transaction.__exit__

        def tx_exit(self, exc_type, *rest):
            outermost = getattr(self, "_outer_transaction", False)
            if exc_type is None and outermost:
                return wrap_once(lambda: exit_tx(self, exc_type, *rest))
            return exit_tx(self, exc_type, *rest)

        wrap_once = wrap(lambda call: call())
        psycopg.Connection.__exit__ = conn_exit
        psycopg.Transaction.__exit__ = tx_exit
    elif point == "amqp-ack":
        try:
            from pika.adapters import blocking_connection
        except ImportError:
            return
        channel = blocking_connection.BlockingChannel
        channel.basic_ack = wrap(channel.basic_ack)


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
    _install(os.environ["LABKIT_CRASH"])
_chain()
