"""Coordinate-wise trimmed mean.

Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning: Towards
Optimal Statistical Rates", ICML 2018.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from coordinator.aggregation.base import (
    AggregationDiagnostics,
    AggregationResult,
    BreakdownError,
    UpdateMatrix,
    UpdateVector,
    Weights,
    num_byzantine,
    validate_fraction,
    validate_updates,
    validate_weights,
)

__all__ = ["TrimmedMean", "trimmed_mean"]


def trimmed_mean(
    updates: UpdateMatrix, num_trimmed: int, weights: Weights | None = None
) -> tuple[UpdateVector, NDArray[np.float64]]:
    """Drop the ``b`` largest and ``b`` smallest values per coordinate and average the rest.

    Parameters
    ----------
    updates:
        float32 ``(n, d)``, already validated.
    num_trimmed:
        ``b >= 0``, the number of values dropped from each side; needs ``n > 2b``.
    weights:
        float64 ``(n,)`` or ``None``. The kept values are averaged with their weights;
        on a coordinate where every kept value has weight 0, they are averaged plainly.

    Returns
    -------
    aggregate:
        float32 ``(d,)``.
    trimmed_share:
        float64 ``(n,)``: the fraction of coordinates on which each update was trimmed.

    Raises
    ------
    BreakdownError
        If ``n <= 2b``.
    """
    n, d = updates.shape
    b = num_trimmed
    if n <= 2 * b:
        raise BreakdownError(f"trimmed mean needs n > 2b, got n={n}, b={b}")
    if b == 0:
        kept_values = updates
        trimmed_share = np.zeros(n)
        if weights is None:
            return np.mean(updates, axis=0, dtype=np.float32), trimmed_share
        kept_weights = np.broadcast_to(weights[:, None], (n, d))
    else:
        order = np.argsort(updates, axis=0, kind="stable")  # (n, d)
        kept_order = order[b : n - b]  # (n - 2b, d)
        kept_values = np.take_along_axis(updates, kept_order, axis=0)  # (n - 2b, d)
        trimmed_rows = np.concatenate([order[:b], order[n - b :]]).ravel()  # (2b * d,)
        trimmed_share = np.bincount(trimmed_rows, minlength=n) / d  # (n,)
        if weights is None:
            return np.mean(kept_values, axis=0, dtype=np.float32), trimmed_share
        kept_weights = weights[kept_order]  # (n - 2b, d)
    total = kept_weights.sum(axis=0)  # (d,)
    weighted = np.einsum("kd,kd->d", kept_weights, kept_values, dtype=np.float64)  # (d,)
    plain = kept_values.mean(axis=0, dtype=np.float64)  # (d,)
    with np.errstate(divide="ignore", invalid="ignore"):
        aggregate = np.where(total > 0, weighted / np.where(total > 0, total, 1.0), plain)
    return aggregate.astype(np.float32), trimmed_share


class TrimmedMean:
    """Coordinate-wise trimmed mean (CWTM).

    With ``b = floor(trim_fraction * n)``, coordinate ``j`` sorts ``x_1j..x_nj``, drops the
    ``b`` smallest and ``b`` largest, and averages the remaining ``n - 2b`` (weighted by
    the kept updates' weights when weights are given). It tolerates up to ``b``
    Byzantine updates, each coordinate of the output staying inside the honest range;
    breakdown condition ``n > 2b`` (always met for ``trim_fraction < 1/2``). Robust on
    its own in the (δ,c)-sense with ``b >= f`` (Byz-VR-MARINA-PP, §2).

    Parameters
    ----------
    trim_fraction:
        Fraction of the updates dropped from *each* side, in ``[0, 0.5)``; set it to at
        least the expected Byzantine fraction.

    Notes
    -----
    The diagnostics' ``scores`` hold, per update, the fraction of coordinates on which it
    was trimmed.
    """

    name: ClassVar[str] = "trimmed-mean"
    stateful: ClassVar[bool] = False

    def __init__(self, trim_fraction: float = 0.2) -> None:
        self.trim_fraction = validate_fraction("trim_fraction", trim_fraction)

    def num_trimmed(self, n: int) -> int:
        """Return ``b = floor(trim_fraction * n)`` for ``n`` updates."""
        return num_byzantine(n, self.trim_fraction)

    def __call__(
        self, updates: UpdateMatrix, weights: ArrayLike | None = None
    ) -> AggregationResult:
        """Aggregate float32 ``(n, d)`` updates with optional ``(n,)`` weights."""
        matrix = validate_updates(updates)
        vector = validate_weights(weights, len(matrix))
        aggregate, share = trimmed_mean(matrix, self.num_trimmed(len(matrix)), vector)
        return AggregationResult(aggregate, AggregationDiagnostics(scores=share))

    def __repr__(self) -> str:
        return f"TrimmedMean(trim_fraction={self.trim_fraction!r})"
