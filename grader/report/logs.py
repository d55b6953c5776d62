"""Service logs as a learner should read them: the learner's own errors, not the clients' chatter.

During a graded run the grader cuts connections and restarts servers on purpose, and the clients
say so at length: librdkafka prints a `%6|<time>|FAIL|rdkafka#...` line per lost broker connection,
and a service that logs each failed Redis or PostgreSQL call with its traceback fills the tail with
`ConnectionError`s. Those are the faults' echo, not bugs. `quiet` keeps everything else, including
every traceback whose error is not a lost connection, and says how much it left out.
"""
from __future__ import annotations

import re

# librdkafka's log lines: %<syslog level>|<time>|<FACILITY>|<client>| ...; levels 0-3 are errors
_RDKAFKA = re.compile(r"^%(\d)\|[\d.]+\|[A-Z_]+\|")
# The last line of a traceback whose error is a lost or refused connection (the grader's faults)
_CONNECTION_ERRORS = re.compile(
    r"^(redis\.exceptions\.(ConnectionError|TimeoutError|BusyLoadingError)|ConnectionRefusedError|ConnectionResetError"
    r"|BrokenPipeError|psycopg\.(errors\.)?(OperationalError|AdminShutdown|InterfaceError)"
    r"|pika\.exceptions\.(AMQPConnectionError|StreamLostError|ConnectionClosedByBroker|ChannelWrongStateError)"
    r"|(socket\.)?timeout|TimeoutError)\b")
_TRACEBACK = "Traceback (most recent call last):"


# psycopg_pool's warning when a server restart or a cut refuses its connections, and libpq's
# indented continuation lines of such a message
_POOL = re.compile(r"^error connecting in '[^']*': connection failed:")
_LIBPQ_MORE = re.compile(r"^\s+(This probably means the server terminated abnormally|before or while processing)")


def is_noise(line: str) -> bool:
    m = _RDKAFKA.match(line)
    if m:
        return int(m.group(1)) >= 4  # warnings, notices, info, debug: a broker came and went
    return bool(_POOL.match(line) or _LIBPQ_MORE.match(line))


def _traceback_end(lines: list[str], start: int) -> int:
    """Index just past a traceback starting at `start`: its indented frames, then the error line."""
    i = start + 1
    while i < len(lines) and (lines[i].startswith((" ", "\t")) or not lines[i].strip()):
        i += 1
    return min(i + 1, len(lines))


def quiet(text: str) -> str:
    """The log without client noise: librdkafka lines below error level and tracebacks of lost
    connections, each group replaced by one line saying how many were left out."""
    lines = text.splitlines()
    out: list[str] = []
    hidden_client = hidden_tracebacks = 0
    i = 0
    while i < len(lines):
        line = lines[i]
        if is_noise(line):
            hidden_client += 1
            i += 1
            continue
        if line.strip() == _TRACEBACK:
            end = _traceback_end(lines, i)
            error = lines[end - 1].strip() if end - 1 > i else ""
            if _CONNECTION_ERRORS.match(error):
                hidden_tracebacks += 1
                i = end
                continue
            out.extend(lines[i:end])
            i = end
            continue
        out.append(line)
        i += 1
    notes = []
    if hidden_client:
        notes.append(f"{hidden_client} client lines about lost connections (librdkafka, psycopg_pool)")
    if hidden_tracebacks:
        notes.append(f"{hidden_tracebacks} tracebacks of lost connections")
    if notes:
        out.append(f"[{' and '.join(notes)} left out: the grader's faults cause them; the full log is in logs/]")
    return "\n".join(out)


def has_own_traceback(text: str) -> bool:
    """A traceback that is not a lost connection's: worth showing."""
    return _TRACEBACK in quiet(text)
