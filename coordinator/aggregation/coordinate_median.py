"""Coordinate-wise median.

Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning: Towards
Optimal Statistical Rates", ICML 2018.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from byzedge.coordinator.aggregation import _compiled
from byzedge.coordinator.aggregation._columns import (
    SORT_COLUMNS,
    column_blocks,
    median_of_sorted,
    transposed,
)
from byzedge.coordinator.aggregation._networks import selection_network, sorting_network
from byzedge.coordinator.aggregation._parallel import map_column_ranges
from byzedge.coordinator.aggregation.base import (
    NON_FINITE_MESSAGE,
    AggregationResult,
    UpdateMatrix,
    UpdateVector,
    Weights,
    unless_uniform,
    validate_updates,
    validate_weights,
)

__all__ = ["CoordinateMedian", "coordinate_median"]


def coordinate_median(updates: UpdateMatrix, weights: Weights | None = None) -> UpdateVector:
    """Return the per-coordinate (weighted) median of ``updates``.

    Unweighted, this is :func:`numpy.median` along axis 0 (the midpoint of the two middle
    values when ``n`` is even). Weighted, coordinate ``j`` sorts ``x_1j..x_nj`` with their
    weights, takes the lower weighted median (the first value whose cumulative weight
    reaches half the total) and the upper one (the first value whose cumulative weight
    exceeds half), and returns their midpoint; with equal weights this is the unweighted
    median, and an update of weight 0 is never chosen.

    The columns are processed in cache-sized blocks, which is several times faster than
    ``numpy.median(axis=0)`` and gives the same float32 values bit for bit: unweighted and
    with numba installed, by a compiled sorting network on all cores
    (:mod:`~byzedge.coordinator.aggregation._compiled`); otherwise transposed and sorted row by row
    with numpy's vectorised sort.

    Parameters
    ----------
    updates:
        float32 ``(n, d)``, already validated.
    weights:
        float64 ``(n,)``, non-negative with a positive sum, or ``None``.

    Returns
    -------
    numpy.ndarray
        float32 ``(d,)``.
    """
    return _coordinate_median(updates, weights, check_finite=False)


def _coordinate_median(
    updates: UpdateMatrix, weights: Weights | None, *, check_finite: bool
) -> UpdateVector:
    """:func:`coordinate_median`; with ``check_finite``, ``ValueError`` on NaN/Inf entries.

    The test is free: numpy sorts NaN after every number, so a sorted row holds only
    finite values exactly when its first and last values are finite.
    """
    d = updates.shape[1]
    result = np.empty(d, dtype=np.float32)
    weights = unless_uniform(weights)
    if _compiled.AVAILABLE:
        n = len(updates)
        if weights is None:
            rows = np.arange(n)
            middle = selection_network(n, (max(n // 2 - 1, 0), n // 2))

            def part(start: int, stop: int) -> bool:
                return _compiled.median_columns(updates, rows, middle, start, stop, result)

        else:
            normalised = weights / weights.sum()  # (n,)
            full = sorting_network(n)

            def part(start: int, stop: int) -> bool:
                return _compiled.weighted_median_columns(
                    updates, normalised, full, start, stop, result
                )

        finite = all(map_column_ranges(d, part))
        if check_finite and not finite:
            raise ValueError(NON_FINITE_MESSAGE)
        return result
    normalised = None if weights is None else weights / weights.sum()  # (n,)
    for columns in column_blocks(d, SORT_COLUMNS):
        block = transposed(updates, columns)  # (width, n), contiguous, our own copy
        if normalised is None:
            block.sort(axis=1)  # in place: the copy is ours
            ordered = block
            result[columns] = median_of_sorted(ordered)
        else:
            ordered = np.sort(block, axis=1)
            result[columns] = _weighted_median_rows(block, normalised)
        if check_finite and not (
            np.isfinite(ordered[:, 0]).all() and np.isfinite(ordered[:, -1]).all()
        ):
            raise ValueError(NON_FINITE_MESSAGE)
    return result


def _weighted_median_rows(block: UpdateMatrix, normalised: Weights) -> UpdateVector:
    """Return the weighted median of each row of the ``(width, n)`` ``block``."""
    order = np.argsort(block, axis=1, kind="stable")  # (width, n)
    values = np.take_along_axis(block, order, axis=1)  # (width, n)
    cumulative = np.cumsum(normalised[order], axis=1)  # (width, n)
    slack = 1e-12  # cumulative sums of normalised float64 weights are exact to ~1e-15
    lower = np.argmax(cumulative >= 0.5 - slack, axis=1)[:, None]  # (width, 1)
    upper = np.argmax(cumulative > 0.5 + slack, axis=1)[:, None]  # (width, 1)
    low: NDArray[np.float64] = np.take_along_axis(values, lower, axis=1)[:, 0].astype(np.float64)
    high: NDArray[np.float64] = np.take_along_axis(values, upper, axis=1)[:, 0].astype(np.float64)
    return ((low + high) / 2).astype(np.float32)


class CoordinateMedian:
    """Coordinate-wise median of the updates (CM).

    ``x_j = median(x_1j, ..., x_nj)`` for every coordinate ``j``, weighted when weights
    are given (see :func:`coordinate_median`). Each coordinate stays inside the range of
    the honest values as long as the Byzantines are fewer than half of the updates
    (by weight, when weighted): breakdown point 1/2. CM alone is not a (δ,c)-robust
    aggregator under heterogeneity; combine it with bucketing for that (Karimireddy, He,
    Jaggi, ICLR 2022).
    """

    name: ClassVar[str] = "coordinate-median"
    stateful: ClassVar[bool] = False
    streaming: ClassVar[bool] = False
    needs_device_ids: ClassVar[bool] = False

    def __call__(
        self, updates: UpdateMatrix, weights: ArrayLike | None = None
    ) -> AggregationResult:
        """Aggregate float32 ``(n, d)`` updates with optional ``(n,)`` weights."""
        matrix = validate_updates(updates, check_finite=False)  # checked while sorting
        vector = validate_weights(weights, len(matrix))
        return AggregationResult(_coordinate_median(matrix, vector, check_finite=True))

    def __repr__(self) -> str:
        return "CoordinateMedian()"
