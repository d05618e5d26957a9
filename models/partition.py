"""Partitioners: how a simulator deals one dataset out to a fleet of devices.

Each partitioner is a small callable class with validated hyperparameters, listed in
:data:`PARTITIONERS` under its permanent name; plain functions do the work.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "MIN_SAMPLES_PER_DEVICE",
    "PARTITIONERS",
    "DirichletPartitioner",
    "IidPartitioner",
    "LabelSortedPartitioner",
    "Partitioner",
    "get_partitioner",
    "partition_dirichlet",
    "partition_iid",
    "partition_label_sorted",
]

# A device needs a couple of samples for a meaningful local step (and batch statistics).
MIN_SAMPLES_PER_DEVICE = 2


def _check_labels(labels: NDArray[np.integer]) -> NDArray[np.int64]:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {arr.dtype}")
    if arr.size and int(arr.min()) < 0:
        raise ValueError("labels must be non-negative")
    return arr.astype(np.int64, copy=False)


def _check_num_devices(num_devices: int, n: int) -> None:
    if isinstance(num_devices, bool) or not isinstance(num_devices, int | np.integer):
        raise ValueError(f"num_devices must be an int, got {num_devices!r}")
    if num_devices < 1:
        raise ValueError(f"num_devices must be >= 1, got {num_devices}")
    if n < num_devices * MIN_SAMPLES_PER_DEVICE:
        raise ValueError(
            f"num_devices={num_devices} needs at least {num_devices * MIN_SAMPLES_PER_DEVICE} "
            f"samples ({MIN_SAMPLES_PER_DEVICE} each), got {n} labels"
        )


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, int | float | np.floating):
        raise ValueError(f"alpha must be a number, got {alpha!r}")
    if not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a finite number > 0, got {alpha}")
    return float(alpha)


def partition_iid(
    labels: NDArray[np.integer], num_devices: int, rng: np.random.Generator
) -> list[NDArray[np.int64]]:
    """Shuffle the indices and deal them into ``num_devices`` near-equal shards.

    Parameters
    ----------
    labels:
        1-D integer labels of the whole dataset (only the length is used).
    num_devices:
        Number of shards; each gets ``n // num_devices`` or one more index.
    rng:
        Source of the shuffle.

    Returns
    -------
    list[NDArray[np.int64]]
        One sorted index array per device; together they cover every index exactly once.

    Raises
    ------
    ValueError
        If ``labels`` is not 1-D or ``num_devices`` is not an int with at least
        ``MIN_SAMPLES_PER_DEVICE`` samples per device.
    """
    arr = _check_labels(labels)
    _check_num_devices(num_devices, arr.shape[0])
    perm = rng.permutation(arr.shape[0])
    return [np.sort(part).astype(np.int64) for part in np.array_split(perm, int(num_devices))]


def partition_dirichlet(
    labels: NDArray[np.integer],
    num_devices: int,
    alpha: float,
    rng: np.random.Generator,
) -> list[NDArray[np.int64]]:
    """Deal each class to devices in proportions drawn from ``Dirichlet(alpha, ..., alpha)``.

    The usual label-skew partition (Hsu et al., 2019): for every class ``c`` draw
    ``p_c ~ Dir(alpha * 1_K)`` over the ``K`` devices and give device ``k`` a share
    ``p_c[k]`` of that class's (shuffled) samples. Small ``alpha`` (0.1) gives each device a
    few dominant classes; large ``alpha`` (100) approaches an iid split.

    A device left with fewer than ``MIN_SAMPLES_PER_DEVICE`` samples is topped up by moving
    random samples, one at a time, from the device that currently holds the most. Moving
    (rather than re-drawing until lucky) always terminates, even for tiny ``alpha`` and
    many devices, and changes the skew only marginally.

    Parameters
    ----------
    labels:
        1-D non-negative integer labels of the whole dataset.
    num_devices:
        Number of devices ``K``.
    alpha:
        Dirichlet concentration, finite and ``> 0``.
    rng:
        Source of the proportions, the shuffles and the top-ups.

    Returns
    -------
    list[NDArray[np.int64]]
        One sorted index array per device, each with at least ``MIN_SAMPLES_PER_DEVICE``
        indices; together they cover every index exactly once.

    Raises
    ------
    ValueError
        Naming the bad parameter: ``labels``, ``num_devices`` (not an int, < 1, or too many
        for the data) or ``alpha`` (not finite and positive).
    """
    arr = _check_labels(labels)
    _check_num_devices(num_devices, arr.shape[0])
    a = _check_alpha(alpha)
    k = int(num_devices)
    shards: list[list[int]] = [[] for _ in range(k)]
    for c in np.unique(arr):
        members = rng.permutation(np.flatnonzero(arr == c))
        proportions = rng.dirichlet(np.full(k, a))
        cuts = (np.cumsum(proportions)[:-1] * members.shape[0]).astype(np.int64)
        for shard, part in zip(shards, np.split(members, cuts), strict=True):
            shard.extend(int(i) for i in part)
    _top_up(shards, rng)
    return [np.sort(np.asarray(s, dtype=np.int64)) for s in shards]


def partition_label_sorted(
    labels: NDArray[np.integer], num_devices: int, rng: np.random.Generator
) -> list[NDArray[np.int64]]:
    """Sort the samples by label and deal contiguous shards (pathological non-IID).

    The split of the bucketing paper (Karimireddy et al., ICLR 2022) and of the
    Byz-VR-MARINA-PP code: the dataset, shuffled within each class, is sorted by label and
    cut into ``num_devices`` contiguous near-equal shards, so each device holds one or two
    classes (with 10 classes and more than 10 devices, mostly one).

    Parameters
    ----------
    labels:
        1-D non-negative integer labels of the whole dataset.
    num_devices:
        Number of shards; each gets ``n // num_devices`` or one more index.
    rng:
        Source of the order within each class.

    Returns
    -------
    list[NDArray[np.int64]]
        One sorted index array per device; together they cover every index exactly once,
        and the labels of shard ``k`` are all ``<=`` those of shard ``k + 1``.

    Raises
    ------
    ValueError
        As :func:`partition_iid`.
    """
    arr = _check_labels(labels)
    _check_num_devices(num_devices, arr.shape[0])
    shuffled = rng.permutation(arr.shape[0])
    order = shuffled[np.argsort(arr[shuffled], kind="stable")]
    return [np.sort(part).astype(np.int64) for part in np.array_split(order, int(num_devices))]


def _top_up(shards: list[list[int]], rng: np.random.Generator) -> None:
    # The caller checked n >= K * MIN, so whenever a shard is short another one holds more
    # than MIN, and the largest shard can always give one sample away.
    while True:
        sizes = [len(s) for s in shards]
        short = int(np.argmin(sizes))
        if sizes[short] >= MIN_SAMPLES_PER_DEVICE:
            return
        donor = shards[int(np.argmax(sizes))]
        moved = donor.pop(int(rng.integers(len(donor))))
        shards[short].append(moved)


class Partitioner(Protocol):
    """Deals the indices of a labelled dataset out to ``num_devices`` devices."""

    def __call__(
        self, labels: NDArray[np.integer], num_devices: int, rng: np.random.Generator
    ) -> list[NDArray[np.int64]]:
        """Return one index array per device."""
        ...


class IidPartitioner:
    """The ``iid`` partitioner: uniform random shards (see :func:`partition_iid`)."""

    def __call__(
        self, labels: NDArray[np.integer], num_devices: int, rng: np.random.Generator
    ) -> list[NDArray[np.int64]]:
        """Return one index array per device."""
        return partition_iid(labels, num_devices, rng)


class DirichletPartitioner:
    """The ``dirichlet`` partitioner: label skew (see :func:`partition_dirichlet`).

    Parameters
    ----------
    alpha:
        Dirichlet concentration, finite and ``> 0``; smaller is more skewed.
    """

    def __init__(self, alpha: float = 0.5) -> None:
        self.alpha = _check_alpha(alpha)

    def __call__(
        self, labels: NDArray[np.integer], num_devices: int, rng: np.random.Generator
    ) -> list[NDArray[np.int64]]:
        """Return one index array per device."""
        return partition_dirichlet(labels, num_devices, self.alpha, rng)


class LabelSortedPartitioner:
    """The ``label-sorted`` partitioner: contiguous shards of the label-sorted data.

    See :func:`partition_label_sorted`.
    """

    def __call__(
        self, labels: NDArray[np.integer], num_devices: int, rng: np.random.Generator
    ) -> list[NDArray[np.int64]]:
        """Return one index array per device."""
        return partition_label_sorted(labels, num_devices, rng)


PARTITIONERS: Mapping[str, Callable[..., Partitioner]] = MappingProxyType(
    {
        "iid": IidPartitioner,
        "dirichlet": DirichletPartitioner,
        "label-sorted": LabelSortedPartitioner,
    }
)


def get_partitioner(name: str, **hyperparameters: float) -> Partitioner:
    """Build the partitioner registered as ``name`` with its hyperparameters.

    Raises
    ------
    ValueError
        If ``name`` is unknown (the message lists the known names) or a hyperparameter is
        invalid.
    """
    factory = PARTITIONERS.get(name)
    if factory is None:
        known = ", ".join(sorted(PARTITIONERS))
        raise ValueError(f"unknown partitioner {name!r}; known partitioners: {known}")
    try:
        return factory(**hyperparameters)
    except TypeError as exc:
        raise ValueError(f"bad hyperparameters for partitioner {name!r}: {exc}") from exc
