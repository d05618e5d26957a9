from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

from coordinator.anomaly import AnomalyScores, robust_z, score_updates


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scaled_up_updates_are_exactly_the_flagged_ones(seed: int) -> None:
    rng = np.random.default_rng(seed)
    updates = rng.normal(size=(23, 50)).astype(np.float32)
    attackers = [2, 11, 19]
    updates[attackers] *= 100
    scores = score_updates(updates)
    assert scores.flagged_indices == tuple(attackers)


def test_scaled_up_updates_are_always_flagged_and_honest_ones_rarely() -> None:
    # A Gaussian honest update exceeds z = 3 on one of two scores now and then: measured
    # 34 false flags in 10,000 honest updates (0.34 %) over seeds 0-499.
    false_flags = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        updates = rng.normal(size=(23, 50)).astype(np.float32)
        updates[20:] *= 100
        flagged = score_updates(updates).flagged
        assert flagged[20:].all()
        false_flags += int(flagged[:20].sum())
    assert false_flags / (200 * 20) < 0.01


def test_a_sign_flipped_update_of_ordinary_norm_is_flagged_by_its_distance() -> None:
    rng = np.random.default_rng(1)
    signal = np.ones(40)
    updates = (signal + 0.1 * rng.normal(size=(12, 40))).astype(np.float32)
    updates[5] = -updates[5]
    scores = score_updates(updates)
    assert abs(scores.norm_z[5]) < 3
    assert scores.distance_z[5] > 3
    assert scores.flagged_indices == (5,)


def test_small_updates_are_not_flagged() -> None:
    rng = np.random.default_rng(2)
    updates = rng.normal(size=(15, 50)).astype(np.float32)
    updates[3] = 0.0
    scores = score_updates(updates)
    assert scores.norm_z[3] < -3
    assert not scores.flagged[3]


def test_score_is_the_larger_of_the_two_z_scores() -> None:
    updates = np.random.default_rng(3).normal(size=(10, 8)).astype(np.float32)
    scores = score_updates(updates)
    assert_allclose(scores.score, np.maximum(scores.norm_z, scores.distance_z))


def test_identical_updates_flag_nobody() -> None:
    updates = np.tile(np.array([0.1, -3.0, 2.5], dtype=np.float32), (8, 1))
    scores = score_updates(updates)
    assert not scores.flagged.any()
    assert_allclose(scores.score, 0.0)


def test_a_huge_outlier_among_identical_updates_is_flagged() -> None:
    updates = np.tile(np.array([0.1, -3.0, 2.5], dtype=np.float32), (8, 1))
    updates[4] *= 1000
    assert score_updates(updates).flagged_indices == (4,)


def test_nearly_identical_updates_flag_nobody() -> None:
    rng = np.random.default_rng(4)
    base = rng.normal(size=30)
    updates = (base + 1e-7 * rng.normal(size=(10, 30))).astype(np.float32)
    assert not score_updates(updates).flagged.any()


def test_all_zero_updates_flag_nobody() -> None:
    scores = score_updates(np.zeros((5, 4), dtype=np.float32))
    assert not scores.flagged.any()
    assert_allclose(scores.score, 0.0)


@pytest.mark.parametrize("n", [1, 2])
def test_fewer_than_three_updates_flag_nobody(n: int) -> None:
    updates = np.zeros((n, 4), dtype=np.float32)
    updates[0] = 1e6
    assert not score_updates(updates).flagged.any()


def test_a_given_centre_replaces_the_coordinate_median() -> None:
    updates = np.zeros((6, 3), dtype=np.float32)
    scores = score_updates(updates, centre=np.array([5.0, 0.0, 0.0]))
    assert_allclose(scores.distance_z, 0.0)
    shifted = score_updates(np.vstack([updates, [[5.0, 0.0, 0.0]]]), centre=np.zeros(3))
    assert shifted.flagged_indices == (6,)


def test_threshold_controls_what_is_flagged() -> None:
    rng = np.random.default_rng(5)
    updates = rng.normal(size=(20, 30)).astype(np.float32)
    updates[0] *= 1.6
    scores = score_updates(updates)
    assert 3 < scores.score[0] < 50
    assert score_updates(updates, threshold=scores.score[0] + 1).flagged_indices == ()


def test_robust_z_is_distance_from_median_in_mad_units() -> None:
    z = robust_z(np.array([1.0, 2.0, 3.0, 4.0, 100.0]), floor=1e-9)
    # median 3, MAD = median(|2,1,0,1,97|) = 1
    assert_allclose(z, np.array([-2.0, -1.0, 0.0, 1.0, 97.0]) / 1.4826)


def test_scores_have_one_entry_per_update() -> None:
    scores = score_updates(np.random.default_rng(6).normal(size=(7, 5)))
    assert isinstance(scores, AnomalyScores)
    for array in (scores.norm_z, scores.distance_z, scores.score, scores.flagged):
        assert array.shape == (7,)
    assert scores.flagged.dtype == np.bool_


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"relative_floor": -1.0}, "relative_floor"),
        ({"centre": np.zeros(2)}, "centre must have shape"),
        ({"centre": np.array([np.nan, 0.0, 0.0])}, "centre contains"),
    ],
)
def test_invalid_arguments_are_rejected(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        score_updates(np.zeros((4, 3), dtype=np.float32), **kwargs)  # type: ignore[arg-type]


def test_non_finite_updates_are_rejected() -> None:
    updates = np.zeros((4, 3), dtype=np.float32)
    updates[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        score_updates(updates)
