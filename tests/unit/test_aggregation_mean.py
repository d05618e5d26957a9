from __future__ import annotations

import numpy as np
from numpy.testing import assert_allclose, assert_array_equal

from byzedge.coordinator.aggregation.mean import Mean


def _f32(rows: list[list[float]]) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


def test_mean_of_two_updates_is_their_midpoint() -> None:
    result = Mean()(_f32([[1.0, 2.0], [3.0, 4.0]]))
    assert_array_equal(result.aggregate, [2.0, 3.0])


def test_weighted_mean_is_sum_of_weighted_updates_over_total_weight() -> None:
    result = Mean()(_f32([[0.0], [10.0]]), np.array([1.0, 3.0]))
    assert_allclose(result.aggregate, [7.5])


def test_zero_weight_update_is_ignored() -> None:
    result = Mean()(_f32([[1.0, 1.0], [1e6, -1e6]]), np.array([2.0, 0.0]))
    assert_array_equal(result.aggregate, [1.0, 1.0])


def test_unit_weights_equal_the_unweighted_mean() -> None:
    updates = np.random.default_rng(0).normal(size=(9, 33)).astype(np.float32)
    assert_allclose(Mean()(updates, np.ones(9)).aggregate, Mean()(updates).aggregate, atol=1e-6)


def test_only_weight_ratios_matter() -> None:
    updates = np.random.default_rng(1).normal(size=(5, 8)).astype(np.float32)
    weights = np.array([0.5, 1.0, 2.0, 0.0, 3.0])
    assert_allclose(Mean()(updates, weights).aggregate, Mean()(updates, 7 * weights).aggregate)


def test_mean_reports_no_diagnostics() -> None:
    diagnostics = Mean()(_f32([[1.0]])).diagnostics
    assert diagnostics.selected is None
    assert diagnostics.scores is None
    assert diagnostics.clip_factors is None
