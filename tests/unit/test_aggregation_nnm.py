from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

from byzedge.coordinator.aggregation import aggregate, build
from byzedge.coordinator.aggregation.base import BreakdownError
from byzedge.coordinator.aggregation.nnm import nearest_neighbour_mix, squared_distances


def _f32(rows: list[list[float]]) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


def test_each_update_becomes_the_mean_of_its_nearest_including_itself() -> None:
    updates = _f32([[0.0], [1.0], [3.0], [10.0]])
    mixed, spread = nearest_neighbour_mix(updates, 2)
    assert_allclose(mixed.ravel(), [0.5, 0.5, 2.0, 6.5])
    assert_allclose(spread, [1.0, 1.0, 4.0, 49.0])


def test_weighted_mixing_uses_the_neighbours_weights() -> None:
    updates = _f32([[0.0], [1.0], [3.0]])
    mixed, _ = nearest_neighbour_mix(updates, 2, np.array([3.0, 1.0, 1.0]))
    assert_allclose(mixed.ravel(), [0.25, 0.25, 2.0])


def test_distances_come_from_the_gram_matrix_exactly_enough() -> None:
    updates = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32) + 1e3
    expected = ((updates[:, None].astype(np.float64) - updates[None]) ** 2).sum(-1)
    assert_allclose(squared_distances(updates), expected, rtol=1e-6, atol=1e-6)


def test_colluding_outliers_do_not_reach_the_median_of_the_mixtures() -> None:
    honest = np.random.default_rng(1).normal(size=(8, 3)).astype(np.float32)
    updates = np.concatenate([honest, np.full((2, 3), 1e6, dtype=np.float32)])
    out = aggregate("nnm", updates)
    assert (np.abs(out) <= np.abs(honest).max()).all()


def test_krum_inside_keeps_its_breakdown_condition() -> None:
    with pytest.raises(BreakdownError, match="2f \\+ 3"):
        build("nnm", inner="krum", max_byzantine_fraction=0.4)(np.zeros((6, 2), np.float32))


def test_inner_rule_receives_the_byzantine_fraction() -> None:
    rule = build("nnm", inner="krum", max_byzantine_fraction=0.1)
    assert rule.inner.rule(0.1).max_byzantine_fraction == 0.1  # type: ignore[attr-defined]


def test_invalid_inner_is_rejected_by_name() -> None:
    with pytest.raises(ValueError, match="inner"):
        build("nnm", inner="centered-clipping")
