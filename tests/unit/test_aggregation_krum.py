from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from byzedge.coordinator.aggregation.base import BreakdownError
from byzedge.coordinator.aggregation.krum import Krum, krum_scores, pairwise_squared_distances
from byzedge.coordinator.aggregation.multi_krum import MultiKrum

LINE = np.array([[0.0], [1.0], [2.0], [100.0], [101.0]], dtype=np.float32)


def _slow_scores(updates: np.ndarray, f: int) -> np.ndarray:
    n = len(updates)
    scores = []
    for i in range(n):
        others = sorted(
            float(np.sum((updates[i].astype(np.float64) - updates[j]) ** 2))
            for j in range(n)
            if j != i
        )
        scores.append(sum(others[: n - f - 2]))
    return np.array(scores)


def test_krum_picks_the_update_closest_to_its_neighbours() -> None:
    result = Krum()(LINE)  # f = 1, two neighbours: scores 5, 2, 5, 9605, 9802
    assert_array_equal(result.aggregate, [1.0])
    assert result.diagnostics.selected == (1,)
    assert result.diagnostics.scores is not None
    assert_allclose(result.diagnostics.scores, [5.0, 2.0, 5.0, 9605.0, 9802.0])


def test_krum_scores_agree_with_a_slow_loop() -> None:
    rng = np.random.default_rng(0)
    updates = (rng.normal(size=(13, 9)) * rng.uniform(0.1, 10, size=(13, 1))).astype(np.float32)
    scores = krum_scores(pairwise_squared_distances(updates), 13 - 2 - 2)
    assert_allclose(scores, _slow_scores(updates, 2), rtol=1e-9)


def test_pairwise_distances_stay_accurate_for_close_large_updates() -> None:
    rng = np.random.default_rng(1)
    updates = (1e4 + 1e-2 * rng.normal(size=(6, 50))).astype(np.float32)
    expected = ((updates[:, None, :].astype(np.float64) - updates[None, :, :]) ** 2).sum(-1)
    assert_allclose(pairwise_squared_distances(updates), expected, rtol=1e-6, atol=1e-12)


def test_krum_never_selects_a_huge_outlier() -> None:
    rng = np.random.default_rng(2)
    updates = rng.normal(size=(15, 20)).astype(np.float32)
    updates[[3, 8, 12]] = 1e6 / np.sqrt(20)
    assert Krum()(updates).diagnostics.selected not in {(3,), (8,), (12,)}


def test_krum_breaks_ties_by_content_not_by_arrival_order() -> None:
    updates = np.array([[0.0], [1.0], [10.0]], dtype=np.float32)  # 0 and 1 tie with k = 1
    forward = Krum()(updates).aggregate
    backward = Krum()(updates[::-1]).aggregate
    assert_array_equal(forward, backward)


@pytest.mark.parametrize(("n", "fraction"), [(2, 0.2), (4, 0.25), (6, 0.34)])
def test_krum_needs_n_at_least_2f_plus_3(n: int, fraction: float) -> None:
    with pytest.raises(BreakdownError, match="2f"):
        Krum(max_byzantine_fraction=fraction)(np.zeros((n, 2), dtype=np.float32))


def test_multi_krum_averages_the_k_best() -> None:
    result = MultiKrum(krum_k=3)(LINE)
    assert_array_equal(result.aggregate, [1.0])
    assert result.diagnostics.selected == (0, 1, 2)


def test_multi_krum_defaults_to_n_minus_f_updates() -> None:
    result = MultiKrum()(LINE)
    assert result.diagnostics.selected == (0, 1, 2, 3)
    assert_allclose(result.aggregate, [25.75])


def test_multi_krum_caps_k_at_n_minus_f() -> None:
    assert MultiKrum(krum_k=50)(LINE).diagnostics.selected == (0, 1, 2, 3)


def test_multi_krum_with_one_update_is_krum() -> None:
    updates = np.random.default_rng(3).normal(size=(11, 7)).astype(np.float32)
    assert_array_equal(MultiKrum(krum_k=1)(updates).aggregate, Krum()(updates).aggregate)


def test_multi_krum_weights_the_selected_updates() -> None:
    result = MultiKrum(krum_k=3)(LINE, np.array([1.0, 1.0, 2.0, 1.0, 1.0]))
    assert_allclose(result.aggregate, [(0 + 1 + 4) / 4])


@pytest.mark.parametrize("value", [-0.1, 0.5, "0.2", None])
def test_invalid_byzantine_fraction_is_rejected(value: object) -> None:
    with pytest.raises(ValueError, match="max_byzantine_fraction"):
        Krum(max_byzantine_fraction=value)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_byzantine_fraction"):
        MultiKrum(max_byzantine_fraction=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_invalid_krum_k_is_rejected(value: object) -> None:
    with pytest.raises(ValueError, match="krum_k"):
        MultiKrum(krum_k=value)  # type: ignore[arg-type]
