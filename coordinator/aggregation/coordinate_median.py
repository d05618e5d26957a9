"""Coordinate-wise median.

Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning: Towards
Optimal Statistical Rates", ICML 2018.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from coordinator.aggregation.base import (
    AggregationResult,
    UpdateMatrix,
    UpdateVector,
    Weights,
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
    if weights is None:
        return np.asarray(np.median(updates, axis=0), dtype=np.float32)  # (d,)
    order = np.argsort(updates, axis=0, kind="stable")  # (n, d)
    values = np.take_along_axis(updates, order, axis=0)  # (n, d)
    normalised = weights / weights.sum()  # (n,)
    cumulative = np.cumsum(normalised[order], axis=0)  # (n, d)
    slack = 1e-12  # cumulative sums of normalised float64 weights are exact to ~1e-15
    lower = np.argmax(cumulative >= 0.5 - slack, axis=0)  # (d,)
    upper = np.argmax(cumulative > 0.5 + slack, axis=0)  # (d,)
    columns = np.arange(updates.shape[1])
    low: NDArray[np.float64] = values[lower, columns].astype(np.float64)  # (d,)
    high: NDArray[np.float64] = values[upper, columns].astype(np.float64)  # (d,)
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

    def __call__(
        self, updates: UpdateMatrix, weights: ArrayLike | None = None
    ) -> AggregationResult:
        """Aggregate float32 ``(n, d)`` updates with optional ``(n,)`` weights."""
        matrix = validate_updates(updates)
        vector = validate_weights(weights, len(matrix))
        return AggregationResult(coordinate_median(matrix, vector))

    def __repr__(self) -> str:
        return "CoordinateMedian()"
