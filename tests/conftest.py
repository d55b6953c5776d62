"""Shared fixtures: one native stack per test session (starting RabbitMQ costs ~6 s), the suite's
markers, and the order tests run in.

What a run proves is split from how often it is proven: `make test` (`-m "not class_scale"`) runs the
unit tests, the Docker tier, each lab's reference graded once and each mutant graded once; `make
test-grader` (`-m class_scale`, then a sample of tests/bench/consecutive.py and `labkit mutate`) grades at class scale:
the synthetic class, repeated runs, catch rates under load."""
from __future__ import annotations

import pytest

from grader.stack import make_stack


@pytest.fixture(scope="session")
def native_stack():
    stack = make_stack(["kafka", "postgres", "redis", "rabbitmq"], "native")
    with stack:
        yield stack


def pytest_configure(config):
    config.addinivalue_line("markers", "class_scale: grading at class scale (a whole class, repeated runs): "
                                       "`make test-grader`, not `make test`")


def _expected_length(item) -> int:
    """Rank by how long a test keeps its worker busy: the longest go first, so that with several xdist
    workers the suite ends when the last long test does, not when a long one starts last."""
    group = item.get_closest_marker("xdist_group")
    if group and group.args and group.args[0] == "synthetic-class":
        return 0  # a whole class graded in one test
    if "tests/docker/" in str(item.fspath):
        return 1  # one group of graded runs on Docker
    if item.get_closest_marker("slow"):
        return 2  # one graded run each
    return 3


def pytest_collection_modifyitems(items):
    items.sort(key=_expected_length)  # stable: the order within a rank is the collection order
