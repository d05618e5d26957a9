from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

from byzedge.coordinator.aggregation.base import BreakdownError
from byzedge.coordinator.aggregation.bulyan import Bulyan


def test_bulyan_needs_n_at_least_4f_plus_3() -> None:
    with pytest.raises(BreakdownError, match="4f"):
        Bulyan()(np.zeros((10, 3), dtype=np.float32))  # f = 2 needs 11


def test_bulyan_selects_n_minus_2f_updates() -> None:
    updates = np.random.default_rng(0).normal(size=(11, 4)).astype(np.float32)
    selected = Bulyan()(updates).diagnostics.selected
    assert selected is not None
    assert len(selected) == 11 - 2 * 2


def test_bulyan_without_byzantines_is_the_mean() -> None:
    updates = np.random.default_rng(1).normal(size=(5, 6)).astype(np.float32)
    result = Bulyan(max_byzantine_fraction=0.0)(updates)
    assert_allclose(result.aggregate, updates.mean(axis=0), rtol=1e-5, atol=1e-6)


def test_bulyan_excludes_huge_outliers_and_stays_in_the_honest_range() -> None:
    rng = np.random.default_rng(2)
    honest = rng.normal(size=(12, 8)).astype(np.float32)
    outliers = rng.choice([-1.0, 1.0], size=(3, 8)).astype(np.float32) * 1e6
    result = Bulyan()(np.vstack([outliers, honest]))  # n = 15, f = 3
    assert result.diagnostics.selected is not None
    assert not {0, 1, 2} & set(result.diagnostics.selected)
    assert (result.aggregate >= honest.min(axis=0)).all()
    assert (result.aggregate <= honest.max(axis=0)).all()


def test_bulyan_averages_the_values_closest_to_the_median_per_coordinate() -> None:
    # f = 1, n = 7: theta = 5 selected (the outlier 50 and one of the extremes drop out),
    # beta = 3 values closest to the median of the selection are averaged.
    updates = np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0], [50.0]], dtype=np.float32)
    result = Bulyan()(updates)
    assert result.diagnostics.selected is not None
    assert 6 not in result.diagnostics.selected
    assert 1.5 <= float(result.aggregate[0]) <= 3.5


@pytest.mark.parametrize("value", [-0.1, 0.5])
def test_invalid_byzantine_fraction_is_rejected(value: float) -> None:
    with pytest.raises(ValueError, match="max_byzantine_fraction"):
        Bulyan(max_byzantine_fraction=value)
