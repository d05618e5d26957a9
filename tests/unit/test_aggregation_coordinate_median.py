from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

from byzedge.coordinator.aggregation.coordinate_median import CoordinateMedian, coordinate_median


def _f32(rows: list[list[float]]) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


def test_median_of_odd_count_is_the_middle_value_per_coordinate() -> None:
    result = CoordinateMedian()(_f32([[1.0, 30.0], [5.0, 10.0], [3.0, 20.0]]))
    assert_array_equal(result.aggregate, [3.0, 20.0])


def test_median_of_even_count_is_the_midpoint_of_the_middle_values() -> None:
    result = CoordinateMedian()(_f32([[1.0], [2.0], [3.0], [10.0]]))
    assert_array_equal(result.aggregate, [2.5])


def test_weighted_median_follows_the_heavy_update() -> None:
    result = CoordinateMedian()(_f32([[1.0], [2.0], [3.0]]), np.array([1.0, 1.0, 5.0]))
    assert_array_equal(result.aggregate, [3.0])


def test_weighted_median_with_tied_halves_is_the_midpoint() -> None:
    result = CoordinateMedian()(_f32([[1.0], [2.0]]), np.array([2.0, 2.0]))
    assert_array_equal(result.aggregate, [1.5])


def test_weighted_median_never_picks_a_zero_weight_update() -> None:
    result = CoordinateMedian()(_f32([[0.0], [100.0], [1.0]]), np.array([1.0, 0.0, 1.0]))
    assert_array_equal(result.aggregate, [0.5])


@pytest.mark.parametrize("n", [1, 2, 5, 8, 13])
def test_unit_weights_equal_the_unweighted_median(n: int) -> None:
    updates = np.random.default_rng(n).normal(size=(n, 40)).astype(np.float32)
    weighted = coordinate_median(updates, np.ones(n))
    assert_allclose(weighted, coordinate_median(updates), rtol=1e-6, atol=1e-7)


def test_median_stays_in_the_honest_range_with_huge_outliers() -> None:
    rng = np.random.default_rng(7)
    honest = rng.uniform(-1.0, 1.0, size=(12, 50)).astype(np.float32)
    outliers = np.full((5, 50), 1e6, dtype=np.float32) / np.sqrt(50)
    outliers[::2] *= -1
    aggregate = CoordinateMedian()(np.vstack([honest, outliers])).aggregate
    assert (aggregate >= honest.min(axis=0)).all()
    assert (aggregate <= honest.max(axis=0)).all()


@settings(max_examples=60, deadline=None)
@given(
    n_honest=st.integers(3, 12),
    seed=st.integers(0, 2**32 - 1),
    weighted=st.booleans(),
)
def test_weighted_median_stays_in_the_honest_range_while_outliers_hold_under_half_the_weight(
    n_honest: int, seed: int, weighted: bool
) -> None:
    rng = np.random.default_rng(seed)
    n_bad = (n_honest - 1) // 2
    honest = rng.normal(size=(n_honest, 6)).astype(np.float32)
    bad = rng.choice([-1e6, 1e6], size=(n_bad, 6)).astype(np.float32)
    weights = rng.uniform(0.5, 1.0, size=n_honest + n_bad) if weighted else None
    if weights is not None:
        weights[n_honest:] *= 0.5  # keeps the outliers' share of the weight below 1/2
    aggregate = coordinate_median(np.vstack([honest, bad]), weights)
    assert (aggregate >= honest.min(axis=0)).all()
    assert (aggregate <= honest.max(axis=0)).all()
