"""Bulyan.

El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of Distributed Learning in
Byzantium", ICML 2018.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike

from coordinator.aggregation.base import (
    AggregationDiagnostics,
    AggregationResult,
    BreakdownError,
    UpdateMatrix,
    num_byzantine,
    validate_fraction,
    validate_updates,
    validate_weights,
)
from coordinator.aggregation.krum import krum_scores, pairwise_squared_distances, select_lowest

__all__ = ["Bulyan"]


class Bulyan:
    """Bulyan: iterated Krum selection, then a coordinate-wise trimmed average.

    With ``f = floor(max_byzantine_fraction * n)``:

    1. select ``θ = n - 2f`` updates by applying Krum ``θ`` times, each time to the
       updates not yet selected (``max(1, m - f - 2)`` neighbours among the ``m``
       remaining) and moving the winner to the selection;
    2. per coordinate, average the ``β = θ - 2f`` selected values closest to the
       selection's coordinate median (weighted by their updates' weights).

    Needs ``n >= 4f + 3`` (breakdown condition; :class:`BreakdownError` otherwise). Each
    output coordinate then lies within the range of honest values, and the selection
    step bounds the ``l2`` deviation as Krum does.

    Parameters
    ----------
    max_byzantine_fraction:
        Upper bound on the Byzantine fraction, in ``[0, 0.5)``; below 1/4 in practice.

    Notes
    -----
    The diagnostics hold the selected indices (increasing) and the first Krum scores
    (over all ``n`` updates).
    """

    name: ClassVar[str] = "bulyan"
    stateful: ClassVar[bool] = False

    def __init__(self, max_byzantine_fraction: float = 0.2) -> None:
        self.max_byzantine_fraction = validate_fraction(
            "max_byzantine_fraction", max_byzantine_fraction
        )

    def __call__(
        self, updates: UpdateMatrix, weights: ArrayLike | None = None
    ) -> AggregationResult:
        """Aggregate float32 ``(n, d)`` updates with optional ``(n,)`` weights."""
        matrix = validate_updates(updates)
        vector = validate_weights(weights, len(matrix))
        n = len(matrix)
        f = num_byzantine(n, self.max_byzantine_fraction)
        if n < 4 * f + 3:
            raise BreakdownError(f"bulyan needs n >= 4f + 3, got n={n}, f={f}")
        distances = pairwise_squared_distances(matrix)  # (n, n)
        first_scores = krum_scores(distances, n - f - 2)  # (n,)
        remaining = np.arange(n)
        chosen: list[int] = []
        for _ in range(n - 2 * f):  # θ selections; Python loop over rounds of Krum, not pairs
            m = len(remaining)
            if m == 1:
                best = 0
            else:
                k = min(max(m - f - 2, 1), m - 1)
                scores = krum_scores(distances[np.ix_(remaining, remaining)], k)  # (m,)
                best = int(select_lowest(scores, matrix[remaining], 1)[0])
            chosen.append(int(remaining[best]))
            remaining = np.delete(remaining, best)
        selected = np.sort(np.array(chosen))  # (θ,)
        subset = matrix[selected]  # (θ, d)
        beta = len(selected) - 2 * f
        median = np.median(subset, axis=0)  # (d,)
        closest = np.argsort(np.abs(subset - median), axis=0, kind="stable")[:beta]  # (β, d)
        values = np.take_along_axis(subset, closest, axis=0).astype(np.float64)  # (β, d)
        if vector is None:
            aggregate = values.mean(axis=0)
        else:
            kept_weights = vector[selected][closest]  # (β, d)
            total = kept_weights.sum(axis=0)  # (d,)
            weighted = (kept_weights * values).sum(axis=0)  # (d,)
            aggregate = np.where(
                total > 0, weighted / np.where(total > 0, total, 1.0), values.mean(axis=0)
            )
        diagnostics = AggregationDiagnostics(
            selected=tuple(int(i) for i in selected), scores=first_scores
        )
        return AggregationResult(aggregate.astype(np.float32), diagnostics)

    def __repr__(self) -> str:
        return f"Bulyan(max_byzantine_fraction={self.max_byzantine_fraction!r})"
