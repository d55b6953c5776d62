"""Shared fixtures: one native stack per test session (starting RabbitMQ costs ~6 s)."""
from __future__ import annotations

import pytest

from grader.stack import make_stack


@pytest.fixture(scope="session")
def native_stack():
    stack = make_stack(["kafka", "postgres", "redis", "rabbitmq"], "native")
    with stack:
        yield stack
