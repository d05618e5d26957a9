"""Weighted mean (FedAvg): the non-robust baseline.

McMahan, Moore, Ramage, Hampson, Agüera y Arcas, "Communication-Efficient Learning of
Deep Networks from Decentralized Data", AISTATS 2017.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike

from coordinator.aggregation.base import (
    AggregationResult,
    UpdateMatrix,
    UpdateVector,
    Weights,
    validate_updates,
    validate_weights,
)

__all__ = ["Mean", "weighted_mean"]


def weighted_mean(updates: UpdateMatrix, weights: Weights | None = None) -> UpdateVector:
    """Return ``sum_i w_i x_i / sum_i w_i`` (the plain mean when ``weights`` is ``None``).

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
        return np.asarray(np.mean(updates, axis=0, dtype=np.float32), dtype=np.float32)  # (d,)
    coefficients = (weights / weights.sum()).astype(np.float32)  # (n,)
    return np.asarray(coefficients @ updates, dtype=np.float32)  # (d,)


class Mean:
    """Weighted mean of the updates (FedAvg).

    ``x = sum_i w_i x_i / sum_i w_i``. Breakdown point 0: a single Byzantine update
    moves the output arbitrarily far, so use it only as a baseline or behind a
    pre-aggregator that bounds each update.
    """

    name: ClassVar[str] = "mean"
    stateful: ClassVar[bool] = False

    def __call__(
        self, updates: UpdateMatrix, weights: ArrayLike | None = None
    ) -> AggregationResult:
        """Aggregate float32 ``(n, d)`` updates with optional ``(n,)`` weights."""
        matrix = validate_updates(updates)
        return AggregationResult(weighted_mean(matrix, validate_weights(weights, len(matrix))))

    def __repr__(self) -> str:
        return "Mean()"
