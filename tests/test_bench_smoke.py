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


def test_rounds_that_disagree_get_another_and_the_table_gives_min_median_max(capsys):
    import types

    from tests.bench.figures import Figure, print_table, run_bench

    values = iter([100.0, 150.0, 140.0, 145.0, 500.0])  # rounds 1-2 differ by 50 %: one more, then agree
    fake = types.SimpleNamespace(one_round=lambda n: [Figure("f", next(values), "ops/s", "raw", 200.0)])
    rows = run_bench("fake", fake, 2, {"n": 1})
    assert rows[0].values == [100.0, 150.0, 140.0, 145.0]  # 2 rounds, then at most 2 more while they differ
    assert "differ by more than 20%" in capsys.readouterr().out
    print_table(rows, "test", 0.0, 1.0)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("fake"))
    assert line.split()[2:6] == ["150", "100", "142", "150"] and "0.71 [0.50-0.75]" in line and "(spread 50%)" in line
