"""Traffic against a learner's HTTP service, every request and response recorded in the history."""
from __future__ import annotations

import itertools
import json
import threading
from dataclasses import dataclass
from typing import Any

import httpx

from .history import History


@dataclass(frozen=True)
class Reply:
    """What the client saw. status 0 means no HTTP answer at all (refused, reset, timed out)."""

    n: int
    status: int
    body: Any
    raw: bytes
    headers: dict[str, str]
    error: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def is_json(self) -> bool:
        return self.body is not None or self.raw.strip() in (b"null",)

    def describe(self) -> str:
        if self.status == 0:
            return f"no answer ({self.error})"
        text = self.raw.decode(errors="replace")
        return f"{self.status} {text[:160]}"


class HttpWorkload:
    """A thread-safe client: numbered requests, each recorded as request + response events."""

    def __init__(self, base_url: str, history: History, actor: str = "client", timeout: float = 20) -> None:
        self.base_url = base_url
        self.history = history
        self.actor = actor
        self._client = httpx.Client(base_url=base_url, timeout=timeout)
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()

    def send(self, op: str, method: str, path: str, *, key: str | None = None, body: Any = None,
             raw: bytes | None = None, **meta: Any) -> Reply:
        """One request. `body` is sent as JSON; `raw` sends bytes as-is (for malformed input)."""
        with self._lock:
            n = next(self._numbers)
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Idempotency-Key"] = key
        content = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        self.history.record("request", self.actor, n=n, op=op, method=method, path=path, key=key,
                            body=body if raw is None else raw.decode(errors="replace"), **meta)
        try:
            resp = self._client.request(method, path, content=content, headers=headers)
            try:
                parsed = resp.json()
            except ValueError:
                parsed = None
            reply = Reply(n, resp.status_code, parsed, resp.content, dict(resp.headers))
        except httpx.HTTPError as e:
            reply = Reply(n, 0, None, b"", {}, error=f"{type(e).__name__}: {e}")
        self.history.record("response", self.actor, n=n, op=op, key=key, status=reply.status,
                            body=reply.body, error=reply.error, **meta)
        return reply

    def close(self) -> None:
        self._client.close()
