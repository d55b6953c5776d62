"""The grader's own reads of RabbitMQ: per-channel prefetch and unacked counts, consumers' ack
mode, queue depths, dead-lettered messages with their x-death headers, the broker's log.

Channels and consumers come from `rabbitmqctl` (no management plugin needed; native runtime: the
private node's NativeRabbitMQ.rabbitmqctl, run as the node's own unprivileged user) in its JSON
format: queue and consumer names are the submission's, and must never shape the rows parsed. Queue
depths and the dead-letter queue come from an AMQP connection with the run's own user on its vhost
(no more than the submission's rights), straight to the broker (not through the services' fault proxy).
Each read is recorded in the history; checkers judge those records only.
"""
from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pika

from ..history import History

if TYPE_CHECKING:
    from ..runner import Run

CHANNELS = "amqp-channels"  # observe: [{pid, connection, prefetch, unacked, consumers}] of the run's vhost
CONSUMERS = "amqp-consumers"  # observe: [{queue, channel, ack_required, prefetch}]
CONNECTIONS = "amqp-connections"  # observe: [{pid, heartbeat}] of the run's vhost (the negotiated timeout)
QUEUES = "amqp-queues"  # observe: {queue: ready}
DLQ = "amqp-dlq"  # observe: messages of the dead-letter queue with their x-death headers
BROKER_LOG = "amqp-broker-log"  # observe: lines of the broker's log that matter (missed heartbeats)


def _ctl(run: "Run") -> Callable[..., str] | None:
    """rabbitmqctl for this run's node: the native node's, or the one inside the Docker container."""
    server = run.stack.servers.get("rabbitmq")
    return getattr(server, "rabbitmqctl", None) or getattr(server, "inspect", None)


def _vhost(run: "Run") -> str:
    """The vhost the run's services use: their own (native), or the admin URL's where the runtime
    cannot create users and vhosts (Docker: "/")."""
    from urllib.parse import unquote, urlsplit

    path = urlsplit(run.ns.service_url("rabbitmq")).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def _rows(text: str, names: list[str]) -> list[dict[str, Any]]:
    """rabbitmqctl's `--formatter json` output: one object per row. A machine format, so a queue or
    consumer name (the submission's) is a value, never a column or a row of its own."""
    try:
        rows = json.loads(text or "[]")
    except ValueError:
        raise ValueError(f"rabbitmqctl printed no JSON: {text[:200]!r}") from None
    return [r for r in rows if isinstance(r, dict) and all(n in r for n in names)] if isinstance(rows, list) else []


def _int(value: Any) -> int:
    return int(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else 0


def observe_channels(run: "Run", history: History, timeout: float = 20) -> list[dict] | None:
    """Channels of this run's vhost: prefetch_count, messages_unacknowledged, consumer_count."""
    ctl = _ctl(run)
    if ctl is None:
        return None
    names = ["pid", "connection", "vhost", "prefetch_count", "messages_unacknowledged", "consumer_count"]
    rows = _rows(ctl("list_channels", *names, "--formatter", "json", "-q", timeout=timeout), names)
    channels = [{"pid": str(r["pid"]), "connection": str(r["connection"]), "prefetch": _int(r["prefetch_count"]),
                 "unacked": _int(r["messages_unacknowledged"]), "consumers": _int(r["consumer_count"])}
                for r in rows if r["vhost"] == _vhost(run)]
    history.observe(CHANNELS, channels=channels)
    return channels


def observe_consumers(run: "Run", history: History, timeout: float = 20) -> list[dict] | None:
    ctl = _ctl(run)
    if ctl is None:
        return None
    names = ["queue_name", "channel_pid", "ack_required", "prefetch_count"]
    rows = _rows(ctl("list_consumers", "-p", _vhost(run), *names, "--formatter", "json", "-q", timeout=timeout),
                 names)
    consumers = [{"queue": str(r["queue_name"]), "channel": str(r["channel_pid"]),
                  "ack_required": r["ack_required"] in (True, "true"), "prefetch": _int(r["prefetch_count"])}
                 for r in rows]
    history.observe(CONSUMERS, consumers=consumers)
    return consumers


def observe_connections(run: "Run", history: History, timeout: float = 20) -> list[dict] | None:
    """Connections of this run's vhost with their negotiated heartbeat (0: heartbeats disabled)."""
    ctl = _ctl(run)
    if ctl is None:
        return None
    names = ["pid", "vhost", "timeout"]
    rows = _rows(ctl("list_connections", *names, "--no-table-headers", "-q", timeout=timeout), names)
    connections = [{"pid": r["pid"], "heartbeat": int(r["timeout"])} for r in rows
                   if r["vhost"] == _vhost(run) and r["timeout"].isdigit()]
    history.observe(CONNECTIONS, connections=connections)
    return connections


def channel_sampler(every: float = 4.0, consumers_every: int = 2):
    """A scenario observer: channels every `every` seconds, consumers every few samples (each
    rabbitmqctl call starts an Erlang VM: about a second of CPU)."""
    def sample(run: "Run", done: threading.Event) -> None:
        n = 0
        while not done.wait(every):
            for k, what in enumerate((observe_channels, observe_consumers)):
                if k and n % consumers_every:
                    continue
                try:
                    what(run, run.history)
                except Exception:  # the broker restarting (a fault), a slow machine: the next sample
                    pass
            n += 1
    return sample


def _connection(run: "Run") -> pika.BlockingConnection:
    """The grader's own connection to the run's vhost, straight to the broker."""
    params = pika.URLParameters(run.ns.service_url("rabbitmq"))
    params.socket_timeout = 5
    params.connection_attempts = 1
    return pika.BlockingConnection(params)


def queue_depths(run: "Run", queues: list[str]) -> dict[str, int | None]:
    """Ready messages per queue (None: the queue does not exist)."""
    out: dict[str, int | None] = {}
    with _connection(run) as conn:
        for queue in queues:
            channel = conn.channel()
            try:
                out[queue] = channel.queue_declare(queue, passive=True).method.message_count
                channel.close()
            except pika.exceptions.ChannelClosedByBroker:  # 404: not declared
                out[queue] = None
    return out


def observe_queues(run: "Run", history: History, queues: list[str]) -> dict[str, int | None]:
    depths = queue_depths(run, queues)
    history.observe(QUEUES, queues=depths)
    return depths


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, dict):
        return {str(k): _text(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_text(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def read_queue(run: "Run", queue: str, limit: int = 500) -> list[dict]:
    """Every message of `queue` (basic_get without ack; the channel's close puts them back)."""
    out = []
    with _connection(run) as conn:
        channel = conn.channel()
        for _ in range(limit):
            method, props, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                break
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
            out.append({"payment_id": (parsed or {}).get("payment_id") if isinstance(parsed, dict) else None,
                        "message_id": props.message_id, "headers": _text(props.headers or {}),
                        "redelivered": bool(method.redelivered)})
    return out


def observe_dlq(run: "Run", history: History, queue: str) -> list[dict]:
    try:
        messages = read_queue(run, queue)
        history.observe(DLQ, queue=queue, messages=messages)
    except Exception as e:  # recorded: the check says it could not be read
        messages = []
        history.observe(DLQ, queue=queue, messages=[], error=f"{type(e).__name__}: {e}")
    return messages


def observe_broker_log(run: "Run", history: History, patterns: tuple[str, ...] = ("missed heartbeats",)) -> list[str]:
    """Lines of the node's log naming `patterns` for this run's user (native runtime only)."""
    server = run.stack.servers.get("rabbitmq")
    workdir = getattr(getattr(server, "workdir", None), "path", None)
    lines: list[str] = []
    if workdir is not None:
        log = Path(workdir) / "rabbitmq.log"
        try:
            text = log.read_text(errors="replace")
        except OSError:
            text = ""
        lines = [line.strip()[:300] for line in text.splitlines() if any(p in line for p in patterns)]
        history.observe(BROKER_LOG, lines=lines, at=[_history_time(history, line) for line in lines])
    return lines


def erlang_pid(text: str) -> tuple[str, str] | None:
    """The local part of an Erlang pid, comparable between the log (`<0.689.0>`) and rabbitmqctl
    (`<node@host.1795454862.689.0>`, JSON: `#PID<10987.689.0>`): its last two numbers."""
    found = re.search(r"<[^<>]*?(\d+)\.(\d+)>", text)
    return found.groups() if found else None


def _history_time(history: History, line: str) -> float | None:
    """The history's clock for a log line stamped `2026-11-23 14:25:11.822220+00:00 ...` (wall clock)."""
    from datetime import datetime

    from ..checks.tracing import wall_t0_ns

    t0 = wall_t0_ns(history)
    try:
        stamp = datetime.fromisoformat(" ".join(line.split(" ", 2)[:2]))
    except ValueError:
        return None
    return round(stamp.timestamp() - t0 / 1e9, 3) if t0 else None
