"""The aggregator benchmark's bookkeeping (tiny sizes; no timing is asserted)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from byzedge import bench
from byzedge.commands.bench import main
from coordinator.aggregation import AGGREGATORS


def test_make_updates_is_float32_with_the_byzantine_rows_last() -> None:
    updates = bench.make_updates(8, 5, 2, seed=1)
    assert updates.shape == (8, 5)
    assert updates.dtype == np.float32
    np.testing.assert_array_equal(updates, bench.make_updates(8, 5, 2, seed=1))


def test_measure_rules_has_one_row_per_registry_rule() -> None:
    rows = bench.measure_rules(bench.make_updates(12, 16, 2), f=2, repeats=2)
    assert [row.name for row in rows] == list(AGGREGATORS)
    assert all(row.error is None for row in rows), [row.status for row in rows]
    assert all(len(row.seconds) == 2 for row in rows)


def test_ratios_are_to_the_mean_measured_in_the_same_run() -> None:
    ticks = itertools.count()
    rows = bench.measure_rules(
        bench.make_updates(12, 16, 2), f=2, repeats=3, clock=lambda: float(next(ticks))
    )
    by_name = {row.name: row for row in rows}
    baseline = by_name["mean"].median
    assert by_name["mean"].ratio == 1.0
    for row in rows:
        assert row.ratio == pytest.approx(row.median / baseline)


def test_status_says_met_or_gives_the_figure() -> None:
    met = bench.TimingRow("krum", {}, (1.0,), ratio=5.0, target=6.0)
    missed = bench.TimingRow("krum", {}, (1.0,), ratio=7.25, target=6.0)
    assert met.status == "met"
    assert missed.status == "NOT met (7.2x vs target 6x)"


def test_byzantine_fraction_is_f_over_n() -> None:
    assert bench.rule_params("krum", 50, 10) == {"max_byzantine_fraction": 0.2}
    assert bench.rule_params("mean", 50, 10) == {}


def test_cli_writes_a_table_with_a_row_per_rule(tmp_path: Path) -> None:
    out = tmp_path / "aggregators.md"
    argv = ["aggregators", "--n", "12", "--d", "16", "--f", "2", "--repeats", "1"]
    assert main([*argv, "--no-byzfl", "--out", str(out)]) == 0
    table = out.read_text(encoding="utf-8")
    for name in AGGREGATORS:
        assert f"\n| {name} |" in table
    assert "byzedge bench aggregators --n 12" in table


def test_cli_rejects_f_not_below_n(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["aggregators", "--n", "4", "--f", "4", "--no-byzfl"]) == 2
    assert "0 <= --f < --n" in capsys.readouterr().err
