"""The ``label-sorted`` partitioner: contiguous shards of the label-sorted data."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from byzedge.models.partition import PARTITIONERS, get_partitioner, partition_label_sorted


def test_label_sorted_is_registered() -> None:
    assert "label-sorted" in PARTITIONERS
    shards = get_partitioner("label-sorted")(np.arange(20) % 5, 4, np.random.default_rng(0))
    assert len(shards) == 4


def test_label_sorted_shards_cover_every_index_once() -> None:
    labels = np.random.default_rng(1).integers(0, 10, size=503)
    shards = partition_label_sorted(labels, 17, np.random.default_rng(2))
    merged = np.sort(np.concatenate(shards))
    np.testing.assert_array_equal(merged, np.arange(503))
    assert {len(s) for s in shards} <= {503 // 17, 503 // 17 + 1}


def test_label_sorted_shards_are_ordered_by_label() -> None:
    labels = np.repeat(np.arange(10), 30)[::-1].copy()
    shards = partition_label_sorted(labels, 20, np.random.default_rng(3))
    for left, right in itertools.pairwise(shards):
        assert labels[left].max() <= labels[right].min()
    # 300 samples, 10 classes, 20 devices: every device holds exactly one class.
    assert all(len(np.unique(labels[s])) == 1 for s in shards)


def test_label_sorted_is_deterministic_for_a_seed() -> None:
    labels = np.arange(100) % 7
    first = partition_label_sorted(labels, 5, np.random.default_rng(4))
    second = partition_label_sorted(labels, 5, np.random.default_rng(4))
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_label_sorted_rejects_too_many_devices() -> None:
    with pytest.raises(ValueError, match="num_devices"):
        partition_label_sorted(np.zeros(3, dtype=np.int64), 2, np.random.default_rng(0))
