"""Bulyan.

El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of Distributed Learning in
Byzantium", ICML 2018.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from coordinator.aggregation._columns import (
    SORT_COLUMNS,
    column_blocks,
    median_of_sorted,
    sorted_rows,
)
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
from coordinator.aggregation.krum import (
    krum_scores,
    pairwise_squared_distances,
    select_lowest_rows,
)

__all__ = ["Bulyan", "closest_to_median_mean"]


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
                best = int(select_lowest_rows(scores, matrix, remaining, 1)[0])
            chosen.append(int(remaining[best]))
            remaining = np.delete(remaining, best)
        selected = np.sort(np.array(chosen))  # (θ,)
        aggregate = closest_to_median_mean(
            matrix, selected, len(selected) - 2 * f, None if vector is None else vector[selected]
        )
        diagnostics = AggregationDiagnostics(
            selected=tuple(int(i) for i in selected), scores=first_scores
        )
        return AggregationResult(aggregate, diagnostics)

    def __repr__(self) -> str:
        return f"Bulyan(max_byzantine_fraction={self.max_byzantine_fraction!r})"


def closest_to_median_mean(
    updates: UpdateMatrix,
    selected: NDArray[np.intp],
    beta: int,
    weights: Weights | None = None,
) -> UpdateVector:
    """Bulyan's second step: per coordinate, the mean of the ``beta`` values nearest the median.

    Parameters
    ----------
    updates:
        float32 ``(n, d)``.
    selected:
        Increasing indices of the ``θ`` selected updates.
    beta:
        ``1 <= beta <= θ``.
    weights:
        float64 ``(θ,)`` weights of the selected updates, or ``None``.

    Returns
    -------
    numpy.ndarray
        float32 ``(d,)``: per coordinate ``j``, the (weighted) float64 mean of the ``beta``
        values ``x_ij`` (``i`` selected) with the smallest ``|x_ij - median_j|`` (float32
        distances; ties to the lower index, as a stable sort), plain where their weights
        are all 0.

    Notes
    -----
    Cache-sized column blocks are transposed and sorted row by row; the ``beta`` closest
    values are the ones at most the ``beta``-th smallest distance, and only rows with a
    tie at that boundary fall back to a stable argsort.
    """
    d = updates.shape[1]
    aggregate = np.empty(d, dtype=np.float32)
    for columns in column_blocks(d, SORT_COLUMNS):
        block = np.ascontiguousarray(updates[selected, columns].T)  # (width, θ)
        median = median_of_sorted(sorted_rows(block))  # (width,)
        distances = np.abs(block - median[:, None])  # (width, θ) float32
        bound = sorted_rows(distances)[:, beta - 1 : beta]  # (width, 1)
        kept = distances <= bound  # (width, θ)
        tied = np.flatnonzero(kept.sum(axis=1) != beta)
        if len(tied):
            order = np.argsort(distances[tied], axis=1, kind="stable")[:, :beta]
            mask = np.zeros((len(tied), block.shape[1]), dtype=bool)
            np.put_along_axis(mask, order, True, axis=1)
            kept[tied] = mask
        values = np.where(kept, block.astype(np.float64), 0.0)  # (width, θ)
        plain = values.sum(axis=1) / beta  # (width,)
        if weights is None:
            aggregate[columns] = plain.astype(np.float32)
            continue
        kept_weights = np.where(kept, weights, 0.0)  # (width, θ)
        total = kept_weights.sum(axis=1)  # (width,)
        weighted = (kept_weights * values).sum(axis=1)  # (width,)
        mixed = np.where(total > 0, weighted / np.where(total > 0, total, 1.0), plain)
        aggregate[columns] = mixed.astype(np.float32)
    return aggregate
