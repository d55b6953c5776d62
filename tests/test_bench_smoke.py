"""Every benchmark runs (tests/bench, `make bench`): one round at tiny sizes, so that a broken benchmark
fails `make test`. Figures are printed, never asserted: speed is not a test."""
from __future__ import annotations

import importlib
import math

import pytest

from tests.bench.__main__ import BENCHES

pytestmark = pytest.mark.slow  # each starts the servers it measures


@pytest.mark.parametrize("name", BENCHES)
def test_benchmark_runs_at_smoke_sizes(name):
    module = importlib.import_module(f"tests.bench.{name}")
    assert set(module.SMOKE) == set(module.SIZES)
    figures = module.one_round(**module.SMOKE)
    assert figures, f"{name} measured nothing"
    for f in figures:
        print(f"{name}: {f.name} {f.value:.3g} {f.unit}" + (f" (anchor {f.anchor} {f.anchor_value:.3g})" if f.anchor else ""))
        assert math.isfinite(f.value) and f.value >= 0, f
        assert f.anchor_value is None or (math.isfinite(f.anchor_value) and f.anchor_value > 0), f
