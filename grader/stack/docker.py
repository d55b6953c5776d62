"""The docker runtime (Testcontainers). Implemented in its own issue; until then it says so."""
from __future__ import annotations

from .base import Server, StackError


def docker_servers(kinds: list[str]) -> dict[str, Server]:
    raise StackError("the docker runtime is not available yet; use --runtime native")
