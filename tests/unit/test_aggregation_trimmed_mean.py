from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from byzedge.coordinator.aggregation.base import BreakdownError
from byzedge.coordinator.aggregation.mean import Mean
from byzedge.coordinator.aggregation.trimmed_mean import TrimmedMean, trimmed_mean

FIVE = np.array([[1.0], [2.0], [3.0], [4.0], [100.0]], dtype=np.float32)


def test_trimmed_mean_drops_one_value_from_each_side_of_five() -> None:
    assert_array_equal(TrimmedMean(trim_fraction=0.2)(FIVE).aggregate, [3.0])


def test_trimmed_mean_trims_each_coordinate_independently() -> None:
    updates = np.array([[1.0, 9.0], [2.0, 1.0], [9.0, 2.0]], dtype=np.float32)
    assert_array_equal(TrimmedMean(trim_fraction=0.34)(updates).aggregate, [2.0, 2.0])


def test_zero_trim_fraction_is_the_mean() -> None:
    updates = np.random.default_rng(0).normal(size=(6, 10)).astype(np.float32)
    assert_allclose(TrimmedMean(0.0)(updates).aggregate, Mean()(updates).aggregate, atol=1e-6)


def test_weighted_trimmed_mean_weights_the_kept_values() -> None:
    result = TrimmedMean(0.2)(FIVE, np.array([1.0, 1.0, 1.0, 3.0, 1.0]))
    assert_allclose(result.aggregate, [(2.0 + 3.0 + 3 * 4.0) / 5])


def test_kept_values_of_zero_weight_are_averaged_plainly() -> None:
    result = TrimmedMean(0.2)(FIVE, np.array([1.0, 0.0, 0.0, 0.0, 1.0]))
    assert_allclose(result.aggregate, [3.0])


def test_unit_weights_equal_the_unweighted_trimmed_mean() -> None:
    updates = np.random.default_rng(3).normal(size=(11, 30)).astype(np.float32)
    rule = TrimmedMean(0.2)
    assert_allclose(rule(updates, np.ones(11)).aggregate, rule(updates).aggregate, atol=1e-6)


def test_trimmed_count_is_the_floor_of_fraction_times_n() -> None:
    assert TrimmedMean(0.2).num_trimmed(10) == 2
    assert TrimmedMean(0.2).num_trimmed(14) == 2
    assert TrimmedMean(0.29).num_trimmed(100) == 29  # 0.29 * 100 == 28.999999999999996


def test_scores_are_the_share_of_coordinates_where_an_update_was_trimmed() -> None:
    rng = np.random.default_rng(4)
    updates = rng.normal(size=(10, 20)).astype(np.float32)
    updates[6] = 1e6
    scores = TrimmedMean(0.1)(updates).diagnostics.scores
    assert scores is not None
    assert scores[6] == 1.0
    assert scores.sum() == pytest.approx(2 * 1)  # b = 1 value trimmed per side per coordinate


def test_trimmed_mean_stays_in_the_honest_range_with_huge_outliers() -> None:
    rng = np.random.default_rng(5)
    honest = rng.uniform(-1.0, 1.0, size=(16, 40)).astype(np.float32)
    outliers = rng.choice([-1.0, 1.0], size=(4, 40)).astype(np.float32) * 1e6 / np.sqrt(40)
    aggregate = TrimmedMean(0.2)(np.vstack([outliers, honest])).aggregate
    assert (aggregate >= honest.min(axis=0)).all()
    assert (aggregate <= honest.max(axis=0)).all()


def test_kernel_raises_breakdown_when_n_is_at_most_twice_the_trim_count() -> None:
    with pytest.raises(BreakdownError, match="n > 2b"):
        trimmed_mean(np.zeros((4, 3), dtype=np.float32), 2)


@pytest.mark.parametrize("value", [-0.1, 0.5, 0.7, float("nan"), "0.2", None, True])
def test_invalid_trim_fraction_is_rejected_by_name_and_value(value: object) -> None:
    with pytest.raises(ValueError, match="trim_fraction"):
        TrimmedMean(value)  # type: ignore[arg-type]
