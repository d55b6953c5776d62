"""HTTP traffic against a learner's service, every request recorded in the history as an operation.

Completion types (see grader/history.py): 2xx -> ok; 4xx -> fail (the service refused: it must
have no effect); a 5xx, a timeout or no answer -> info (it may have taken effect, or not).
Every request carries the grader's own W3C `traceparent`, so the service's SERVER span belongs to a
trace the grader knows, and a seeded secret in its Authorization header, which must never appear in
a span. The whole request has a deadline (not per read): a service that drips its answer cannot
hold the grader.
"""
from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

from ..history import History

MAX_BODY = 1 << 20  # bytes of a response the grader reads; the rest is cut


@dataclass(frozen=True)
class Reply:
    """What the client saw. status 0 means no HTTP answer at all (refused, reset, timed out)."""

    n: int
    status: int
    body: Any
    raw: bytes
    headers: dict[str, str]
    error: str = ""
    trace_id: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def type(self) -> str:
        """ok | fail | info, as the history records it."""
        if self.ok:
            return "ok"
        if 400 <= self.status < 500:
            return "fail"
        return "info"

    @property
    def is_json(self) -> bool:
        return self.body is not None or self.raw.strip() in (b"null",)

    def describe(self) -> str:
        if self.status == 0:
            return f"no answer ({self.error})"
        text = self.raw.decode(errors="replace")
        return f"{self.status} {text[:160]}"


class HttpWorkload:
    """A thread-safe client: each request is an operation (invoke + ok/fail/info) in the history."""

    def __init__(self, base_url: str, history: History, actor: str = "client", timeout: float = 20,
                 seed: int = 0, secret: str | None = None, max_connections: int = 100) -> None:
        self.base_url = base_url
        self.history = history
        self.actor = actor
        self.timeout = timeout
        self.secret = secret
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=min(max_connections, 20))
        self._client = httpx.Client(base_url=base_url, timeout=timeout, limits=limits)
        self._ids = random.Random(seed ^ 0x7A11)  # trace ids: replayable with the seed, unique per request
        self._lock = threading.Lock()

    def _trace_ids(self) -> tuple[str, str]:
        with self._lock:
            return f"{self._ids.getrandbits(128) or 1:032x}", f"{self._ids.getrandbits(64) or 1:016x}"

    def send(self, f: str, method: str, path: str, *, key: str | None = None, body: Any = None,
             raw: bytes | None = None, **meta: Any) -> Reply:
        """One request. `body` is sent as JSON; `raw` sends bytes as-is (for malformed input).
        `meta` is recorded with the invocation (e.g. probe="...", retry=True)."""
        trace_id, span_id = self._trace_ids()
        headers = {"Content-Type": "application/json", "traceparent": f"00-{trace_id}-{span_id}-01"}
        if key is not None:
            headers["Idempotency-Key"] = key
        if self.secret:
            headers["Authorization"] = f"Bearer {self.secret}"
        content = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        n = self.history.invoke(self.actor, f, method=method, path=path, key=key, trace_id=trace_id,
                                parent_span_id=span_id,
                                body=body if raw is None else raw.decode(errors="replace"), **meta)
        try:
            reply = self._request(n, method, path, content, headers, trace_id)
        except (httpx.HTTPError, TimeoutError) as e:
            reply = Reply(n, 0, None, b"", {}, error=f"{type(e).__name__}: {e}", trace_id=trace_id)
        self.history.complete(n, reply.type, self.actor, f, status=reply.status, body=reply.body,
                              error=reply.error)
        return reply

    def _request(self, n: int, method: str, path: str, content: bytes, headers: dict, trace_id: str) -> Reply:
        raw = bytearray()
        # A total deadline: httpx's timeout is per read, so a server dripping bytes is cut here.
        with self._client.stream(method, path, content=content, headers=headers,
                                 extensions={"timeout": {"connect": 5, "read": self.timeout, "write": 5,
                                                         "pool": self.timeout}}) as resp:
            stop_at = time.monotonic() + self.timeout
            for chunk in resp.iter_bytes():
                raw += chunk
                if len(raw) > MAX_BODY or time.monotonic() > stop_at:
                    raise TimeoutError("response too slow or too large; cut by the grader")
            try:
                parsed = json.loads(raw) if raw else None
            except ValueError:
                parsed = None
            return Reply(n, resp.status_code, parsed, bytes(raw), dict(resp.headers), trace_id=trace_id)

    def close(self) -> None:
        self._client.close()
