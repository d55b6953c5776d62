"""The suite's own plumbing: tests that must share a worker (one synthetic class, one Docker daemon)
really do. pytest-xdist's --dist loadgroup renames node ids; when a pytest release stores them
elsewhere the grouping stops without a word (seen with pytest 9.2) and every worker grades the class."""
import pytest


@pytest.mark.xdist_group("suite-setup")
def test_loadgroup_keeps_a_group_on_one_worker(request):
    if not getattr(request.config.option, "loadgroup", False):  # set on xdist workers only
        pytest.skip("not run with --dist loadgroup")
    assert request.node.nodeid.endswith("@suite-setup"), (
        "pytest-xdist did not tag this test with its group: grouped tests would run on every worker "
        "(pin pytest to a release pytest-xdist supports, see pyproject.toml)")
