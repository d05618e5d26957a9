"""Geometric median by smoothed Weiszfeld iterations (RFA).

Pillutla, Kakade, Harchaoui, "Robust Aggregation for Federated Learning", IEEE Transactions
on Signal Processing 70, 2022 (arXiv 1912.13445).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from coordinator.aggregation.base import (
    AggregationDiagnostics,
    AggregationResult,
    UpdateMatrix,
    UpdateVector,
    Weights,
    row_norms,
    validate_positive,
    validate_positive_int,
    validate_updates,
    validate_weights,
)

__all__ = ["GeometricMedian", "smoothed_weiszfeld"]


def smoothed_weiszfeld(
    updates: UpdateMatrix,
    weights: Weights | None,
    nu: float,
    max_iter: int,
    tol: float,
) -> tuple[UpdateVector, NDArray[np.float64], int]:
    """Approximate ``argmin_z sum_i w_i max(nu, ||z - x_i||)`` from the weighted mean.

    Each iteration sets ``b_i = w_i / max(nu, ||z - x_i||)`` and ``z = sum_i b_i x_i /
    sum_i b_i``; it stops after ``max_iter`` iterations or once ``z`` moves by at most
    ``tol * max(1, ||z||)``.

    Returns
    -------
    aggregate:
        float32 ``(d,)``.
    distances:
        float64 ``(n,)``: ``||z - x_i||`` at the returned ``z``.
    iterations:
        The number of iterations run.
    """
    alpha = np.ones(len(updates)) if weights is None else weights / weights.sum()  # (n,)
    points = updates.astype(np.float64)  # (n, d)
    z = alpha @ points / alpha.sum()  # (d,)
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 (the count is returned)
        distances = row_norms(points - z)  # (n,)
        beta = alpha / np.maximum(nu, distances)  # (n,)
        z_next = beta @ points / beta.sum()  # (d,)
        step = float(np.linalg.norm(z_next - z))
        z = z_next
        if step <= tol * max(1.0, float(np.linalg.norm(z))):
            break
    return z.astype(np.float32), row_norms(points - z), iterations


class GeometricMedian:
    """Geometric median (RFA) by smoothed Weiszfeld iterations.

    ``z* = argmin_z sum_i w_i ||z - x_i||``, approximated from the weighted mean by
    ``b_i = w_i / max(nu, ||z - x_i||)``, ``z <- sum_i b_i x_i / sum_i b_i``. Breakdown point
    1/2: the output stays bounded while the Byzantines hold less than half the weight.
    Not (δ,c)-robust alone under heterogeneity (combine with bucketing). ``nu`` is an
    absolute distance: updates much smaller than ``nu`` make the result the weighted mean.

    Parameters
    ----------
    nu:
        Smoothing ``nu > 0`` (0.1 in RFA and ByzFL).
    max_iter:
        Iteration cap ``>= 1`` (the papers' code runs 3 to 8; we default higher, with
        early stopping).
    tol:
        Relative step below which the iterations stop, ``> 0``.

    Notes
    -----
    The diagnostics' ``scores`` hold the distances ``||z - x_i||``.
    """

    name: ClassVar[str] = "geometric-median"
    stateful: ClassVar[bool] = False

    def __init__(self, nu: float = 0.1, max_iter: int = 100, tol: float = 1e-6) -> None:
        self.nu = validate_positive("nu", nu)
        self.max_iter = validate_positive_int("max_iter", max_iter)
        self.tol = validate_positive("tol", tol)

    def __call__(
        self, updates: UpdateMatrix, weights: ArrayLike | None = None
    ) -> AggregationResult:
        """Aggregate float32 ``(n, d)`` updates with optional ``(n,)`` weights."""
        matrix = validate_updates(updates)
        vector = validate_weights(weights, len(matrix))
        aggregate, distances, _ = smoothed_weiszfeld(
            matrix, vector, self.nu, self.max_iter, self.tol
        )
        return AggregationResult(aggregate, AggregationDiagnostics(scores=distances))

    def __repr__(self) -> str:
        return f"GeometricMedian(nu={self.nu!r}, max_iter={self.max_iter!r}, tol={self.tol!r})"
