"""The external runtime: servers that already run somewhere, given by the contract's env vars.

Useful for CI service containers or a shared classroom stack. The grader never starts or stops
them; faults that need process control are refused with a clear message.
"""
from __future__ import annotations

import os

from .base import ENV_VARS, Server, StackError


class ExternalServer(Server):
    def __init__(self, kind: str, url: str) -> None:
        self.kind = kind  # type: ignore[misc]  # one class serves every kind
        self._url = url

    @property
    def url(self) -> str:
        return self._url

    def start(self, timeout: float) -> None:
        pass  # already running: readiness is the caller's first real request

    def stop(self) -> None:
        pass


def external_servers(kinds: list[str], environ: dict[str, str] | None = None) -> dict[str, Server]:
    environ = os.environ if environ is None else environ
    missing = [ENV_VARS[k] for k in kinds if not environ.get(ENV_VARS[k])]
    if missing:
        raise StackError(f"runtime 'external' needs these variables set: {', '.join(missing)}")
    return {k: ExternalServer(k, environ[ENV_VARS[k]]) for k in kinds}
