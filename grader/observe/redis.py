"""Reading a cache with the grader's own Redis client: the run's reader user (`Namespace.reader_url_for
("redis")`: the run's keys only, the commands below only; credentials.REDIS_READER_COMMANDS), never
the service's user and never through the fault proxy, so a cut of the services' path does not blind
the grader.

A lab states which key holds what (lab 3: `<namespace>:product:<id>`, JSON with a "version"); the
observer reads those keys and their remaining TTLs, records them, and can expire a key the way a
TTL would (the stampede starts at a moment the grader chooses).
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable, Iterable

import redis

from ..history import History


class RedisObserver:
    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)

    def entries(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """{key: {"raw": text or None, "version": int or None, "pttl_ms": int}} for each key: pttl -2
        means no such key, -1 a key without a TTL. "version" is the JSON value's "version", if any."""
        keys = list(keys)
        pipe = self.client.pipeline(transaction=False)
        for k in keys:
            pipe.get(k)
            pipe.pttl(k)
        replies = pipe.execute() if keys else []
        out = {}
        for i, k in enumerate(keys):
            raw, pttl = replies[2 * i], replies[2 * i + 1]
            text = raw.decode(errors="replace") if raw is not None else None
            out[k] = {"raw": text, "version": version_of(text), "pttl_ms": int(pttl)}
        return out

    def expire(self, key: str) -> bool:
        """End the key's life now, as its TTL would (the grader's admin DEL)."""
        return bool(self.client.delete(key))

    def other_keys(self, prefix: str, besides: str) -> dict[str, dict[str, Any]]:
        """Every key under `prefix` that does not start with `besides` (the cache entries), with its
        value and PTTL: a submission's locks are among them (their names are the submission's)."""
        keys = [raw.decode(errors="replace") for raw in self.client.scan_iter(match=glob_escape(prefix) + "*",
                                                                              count=1000)]
        return {k: e for k, e in self.entries([k for k in keys if not k.startswith(besides)]).items()
                if e["pttl_ms"] != -2}

    def version(self, key: str) -> int | None:
        raw = self.client.get(key)
        return version_of(raw.decode(errors="replace") if raw is not None else None)

    def wait_version(self, key: str, at_least: int, timeout: float) -> bool:
        """Until the cached version of `key` is at least `at_least` (bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                v = self.version(key)
                if v is not None and v >= at_least:
                    return True
            except redis.RedisError:
                pass
            time.sleep(0.02)
        return False

    def close(self) -> None:
        self.client.close()


def glob_escape(text: str) -> str:
    """`text` as a literal inside a Redis glob pattern (SCAN MATCH)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def version_of(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    v = value.get("version") if isinstance(value, dict) else None
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def observe_cache(history: History, what: str, observer: RedisObserver, keys: dict[str, str], t_hint: float | None = None,
                  **extra: Any) -> dict:
    """Record {id: entry} for `keys` ({id: redis key}) as observation `what` (with the history time
    it was read at); a Redis error is recorded too."""
    t = history.elapsed() if t_hint is None else t_hint
    try:
        entries = observer.entries(keys.values())
        data = {"entries": {pid: entries[k] for pid, k in keys.items()}, "t_read": round(t, 4)}
    except redis.RedisError as e:
        data = {"error": f"{type(e).__name__}: {e}"}
    history.observe(what, **data, **extra)
    return data


def versions_stable(observer: RedisObserver, keys: Callable[[], list[str]], seconds: float = 1.0) -> Callable[[], bool]:
    """A quiesce condition: the cached versions of `keys` have not changed for `seconds`."""
    state: dict[str, Any] = {"value": None, "since": time.monotonic()}

    def stable() -> bool:
        value = [e["version"] for e in observer.entries(keys()).values()]
        if value != state["value"]:
            state.update(value=value, since=time.monotonic())
        return time.monotonic() - state["since"] >= seconds

    return stable
