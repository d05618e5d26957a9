from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from byzedge.models import (
    MIN_SAMPLES_PER_DEVICE,
    PARTITIONERS,
    DirichletPartitioner,
    get_partitioner,
    load_digits_split,
    partition_dirichlet,
    partition_iid,
)


def _labels() -> NDArray[np.int64]:
    return load_digits_split().train_y


def _mean_label_entropy(labels: NDArray[np.int64], parts: list[NDArray[np.int64]]) -> float:
    entropies = []
    for part in parts:
        p = np.bincount(labels[part], minlength=10) / part.size
        p = p[p > 0]
        entropies.append(float(-(p * np.log(p)).sum()))
    return float(np.mean(entropies))


def _assert_exact_cover(parts: list[NDArray[np.int64]], n: int) -> None:
    joined = np.concatenate(parts)
    np.testing.assert_array_equal(np.sort(joined), np.arange(n))


def test_iid_partition_covers_every_index_exactly_once() -> None:
    labels = _labels()
    parts = partition_iid(labels, 7, np.random.default_rng(0))
    assert len(parts) == 7
    _assert_exact_cover(parts, labels.size)


def test_iid_partition_shards_differ_in_size_by_at_most_one() -> None:
    sizes = [p.size for p in partition_iid(_labels(), 7, np.random.default_rng(0))]
    assert max(sizes) - min(sizes) <= 1


def test_partitions_are_int64_index_arrays() -> None:
    for part in partition_dirichlet(_labels(), 5, 0.5, np.random.default_rng(0)):
        assert part.dtype == np.int64


def test_dirichlet_small_alpha_is_more_skewed_than_iid() -> None:
    labels = _labels()
    iid = partition_iid(labels, 10, np.random.default_rng(0))
    skewed = partition_dirichlet(labels, 10, 0.1, np.random.default_rng(0))
    assert _mean_label_entropy(labels, skewed) < 0.6 * _mean_label_entropy(labels, iid)


def test_dirichlet_partition_covers_every_index_exactly_once() -> None:
    labels = _labels()
    _assert_exact_cover(partition_dirichlet(labels, 10, 0.1, np.random.default_rng(1)), labels.size)


def test_dirichlet_gives_every_device_at_least_two_samples_even_with_tiny_alpha() -> None:
    parts = partition_dirichlet(_labels(), 100, 0.01, np.random.default_rng(2))
    assert min(p.size for p in parts) >= MIN_SAMPLES_PER_DEVICE


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(2, 300),
    num_devices=st.integers(1, 20),
    alpha=st.floats(0.01, 100.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_dirichlet_partition_is_an_exact_cover_with_minimum_sizes(
    n: int, num_devices: int, alpha: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, size=max(n, 2 * num_devices))
    parts = partition_dirichlet(labels, num_devices, alpha, rng)
    assert len(parts) == num_devices
    _assert_exact_cover(parts, labels.size)
    assert min(p.size for p in parts) >= MIN_SAMPLES_PER_DEVICE


def test_same_seed_gives_the_same_dirichlet_partition() -> None:
    labels = _labels()
    a = partition_dirichlet(labels, 6, 0.3, np.random.default_rng(5))
    b = partition_dirichlet(labels, 6, 0.3, np.random.default_rng(5))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan"), float("inf")])
def test_dirichlet_rejects_bad_alpha(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        partition_dirichlet(_labels(), 5, alpha, np.random.default_rng(0))


@pytest.mark.parametrize("num_devices", [0, -3])
def test_partitioners_reject_non_positive_num_devices(num_devices: int) -> None:
    with pytest.raises(ValueError, match="num_devices"):
        partition_iid(_labels(), num_devices, np.random.default_rng(0))


def test_partitioners_reject_more_devices_than_data_allows() -> None:
    with pytest.raises(ValueError, match="num_devices"):
        partition_dirichlet(np.zeros(5, dtype=np.int64), 3, 1.0, np.random.default_rng(0))


def test_partitioners_reject_two_dimensional_labels() -> None:
    with pytest.raises(ValueError, match="labels"):
        partition_iid(np.zeros((4, 4), dtype=np.int64), 2, np.random.default_rng(0))


def test_registry_holds_the_permanent_names() -> None:
    assert set(PARTITIONERS) == {"iid", "dirichlet", "label-sorted"}


@pytest.mark.parametrize("name", sorted(PARTITIONERS))
def test_every_registered_partitioner_covers_every_index(name: str) -> None:
    labels = _labels()
    _assert_exact_cover(get_partitioner(name)(labels, 4, np.random.default_rng(0)), labels.size)


def test_dirichlet_partitioner_validates_alpha_on_construction() -> None:
    with pytest.raises(ValueError, match="alpha"):
        DirichletPartitioner(alpha=0.0)


def test_get_partitioner_lists_known_names_for_unknown_name() -> None:
    with pytest.raises(ValueError, match="dirichlet, iid"):
        get_partitioner("shards")


def test_get_partitioner_rejects_unknown_hyperparameter() -> None:
    with pytest.raises(ValueError, match="iid"):
        get_partitioner("iid", alpha=0.5)
