"""Configuration from env: the service contract (see the top-level README)."""
from __future__ import annotations

import os


class ConfigError(RuntimeError):
    pass


def env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None or value == "":
        raise ConfigError(f"environment variable {name} is not set (the grader and `make lab-N` set it)")
    return value


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    try:
        return int(raw) if raw else default
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None


def namespaced(name: str) -> str:
    """Topic, consumer group or queue name for this run: `<LAB_NAMESPACE>.<name>`."""
    ns = os.environ.get("LAB_NAMESPACE", "")
    return f"{ns}.{name}" if ns else name
