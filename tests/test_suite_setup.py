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


def test_pyproject_license_is_an_spdx_string():
    """A license table makes setuptools (>= 77) print a deprecation banner on every `make install`."""
    import tomllib
    from pathlib import Path

    data = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert isinstance(data["project"]["license"], str)
    assert any(r.startswith("setuptools>=77") for r in data["build-system"]["requires"])
