from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

from byzedge.coordinator.aggregation import build
from byzedge.coordinator.aggregation.arc import AdaptiveRobustClipping, arc_clip_count, arc_factors


@pytest.mark.parametrize(("n", "f", "k"), [(10, 2, 3), (10, 0, 0), (7, 1, 1), (20, 4, 6)])
def test_clip_count_is_floor_of_2_f_over_n_times_n_minus_f(n: int, f: int, k: int) -> None:
    assert arc_clip_count(n, f) == k


def test_the_k_largest_are_clipped_to_the_next_largest_norm() -> None:
    factors, radius = arc_factors(np.array([1.0, 5.0, 2.0, 10.0, 3.0]), 2)
    assert radius == 3.0
    assert_allclose(factors, [1.0, 0.6, 1.0, 0.3, 1.0])


def test_nothing_is_clipped_without_byzantines() -> None:
    updates = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    rule = AdaptiveRobustClipping(inner="mean", max_byzantine_fraction=0.2)  # f = 0
    assert_allclose(rule(updates).aggregate, updates.mean(axis=0), rtol=1e-6)
    assert rule.last_radius is None


def test_an_outlier_is_clipped_to_an_honest_norm_before_the_inner_rule() -> None:
    honest = np.ones((9, 2), dtype=np.float32)
    updates = np.concatenate([honest, [[1e6, 0.0]]]).astype(np.float32)
    result = build("arc", inner="mean", max_byzantine_fraction=0.1)(updates)  # f = 1, k = 1
    assert result.diagnostics.clip_factors is not None
    assert result.diagnostics.clip_factors[-1] == pytest.approx(np.sqrt(2) / 1e6)
    assert np.linalg.norm(result.aggregate - 1.0) <= np.sqrt(2) / 10 + 1e-5


def test_invalid_fraction_is_rejected_by_name() -> None:
    with pytest.raises(ValueError, match="max_byzantine_fraction"):
        build("arc", max_byzantine_fraction=-0.1)
