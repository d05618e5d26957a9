from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from byzedge.coordinator.aggregation import aggregate, build
from byzedge.coordinator.aggregation.base import BreakdownError
from byzedge.coordinator.aggregation.bucketing import Bucketing, bucket_means, random_buckets


def _f32(rows: list[list[float]]) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


def test_bucket_size_one_is_the_inner_rule() -> None:
    updates = np.random.default_rng(0).normal(size=(9, 4)).astype(np.float32)
    expected = aggregate("coordinate-median", updates)
    assert_allclose(aggregate("bucketing", updates, bucket_size=1, seed=1), expected)


def test_one_bucket_of_everything_is_the_mean() -> None:
    updates = np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)
    result = aggregate("bucketing", updates, bucket_size=5, max_byzantine_fraction=0.0)
    assert_allclose(result, updates.mean(axis=0), rtol=1e-6)


def test_buckets_are_a_fresh_permutation_split_in_consecutive_groups() -> None:
    buckets = random_buckets(np.random.default_rng(4), 5, 2)
    permutation = np.random.default_rng(4).permutation(5)
    assert [list(b) for b in buckets] == [
        list(permutation[:2]),
        list(permutation[2:4]),
        list(permutation[4:]),
    ]


def test_last_buckets_records_the_partition_of_the_latest_call() -> None:
    rule = Bucketing(seed=2)
    rule(np.zeros((7, 2), dtype=np.float32))
    assert rule.last_buckets is not None
    assert sorted(i for b in rule.last_buckets for i in b) == list(range(7))
    assert [len(b) for b in rule.last_buckets] == [2, 2, 2, 1]


def test_weighted_bucket_means_and_mean_member_weights() -> None:
    updates = _f32([[0.0], [4.0], [10.0]])
    weights = np.array([3.0, 1.0, 2.0])
    buckets = (np.array([0, 1]), np.array([2]))
    means, bucket_weights = bucket_means(updates, weights, buckets)
    assert_allclose(means, [[1.0], [10.0]])
    assert bucket_weights is not None
    assert_allclose(bucket_weights, [2.0, 2.0])


def test_a_bucket_of_zero_weights_is_averaged_plainly() -> None:
    means, _ = bucket_means(_f32([[0.0], [2.0]]), np.array([0.0, 0.0]), (np.array([0, 1]),))
    assert_allclose(means, [[1.0]])


def test_an_injected_generator_is_used_and_advanced() -> None:
    rng = np.random.default_rng(9)
    rule = Bucketing(seed=rng)
    updates = np.random.default_rng(3).normal(size=(8, 2)).astype(np.float32)
    rule(updates)
    replay = np.random.default_rng(9)
    replay.permutation(8)
    assert_array_equal(rng.permutation(8), replay.permutation(8))


def test_inner_rule_and_its_parameters_are_used() -> None:
    rule = build("bucketing", inner="trimmed-mean", inner_params={"trim_fraction": 0.3})
    assert isinstance(rule, Bucketing)
    assert rule.inner.name == "trimmed-mean"
    assert rule.inner.params == {"trim_fraction": 0.3}


def test_krum_inside_gets_the_contaminated_bucket_count() -> None:
    # n = 22, f = 4, m = 11 buckets, f_b = 4: Krum needs 11 >= 2*4 + 3.
    updates = np.random.default_rng(5).normal(size=(22, 3)).astype(np.float32)
    result = build("bucketing", inner="krum", seed=0)(updates)
    assert result.diagnostics.selected is not None
    assert len(result.diagnostics.selected) == 2  # the members of the chosen bucket


def test_a_possible_majority_of_contaminated_buckets_is_a_breakdown() -> None:
    updates = np.zeros((10, 2), dtype=np.float32)
    with pytest.raises(BreakdownError, match="buckets"):
        Bucketing(bucket_size=4, max_byzantine_fraction=0.2)(updates)  # f=2 of m=3


def test_diagnostics_map_bucket_scores_back_to_updates() -> None:
    rule = Bucketing(inner="norm-clipping", seed=0)
    result = rule(np.random.default_rng(6).normal(size=(6, 3)).astype(np.float32))
    assert rule.last_buckets is not None
    scores = result.diagnostics.scores
    assert scores is not None
    for bucket in rule.last_buckets:
        assert len({float(scores[i]) for i in bucket}) == 1


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"bucket_size": 0}, "bucket_size"),
        ({"bucket_size": 1.5}, "bucket_size"),
        ({"seed": -1}, "seed"),
        ({"seed": "x"}, "seed"),
        ({"inner": "avg"}, "inner"),
        ({"inner": "clipping-vr"}, "inner"),
        ({"inner_params": {"trim_fraction": 0.7}, "inner": "trimmed-mean"}, "trim_fraction"),
        ({"inner_params": [1]}, "inner_params"),
        ({"max_byzantine_fraction": 0.5}, "max_byzantine_fraction"),
    ],
)
def test_invalid_parameters_are_rejected_by_name(kwargs: dict[str, object], parameter: str) -> None:
    with pytest.raises(ValueError, match=parameter):
        build("bucketing", **kwargs)
