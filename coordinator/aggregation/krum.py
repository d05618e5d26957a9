"""Krum.

Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries: Byzantine
Tolerant Gradient Descent", NeurIPS 2017.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from coordinator.aggregation._columns import centred_gram
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

__all__ = [
    "Krum",
    "distances_from_gram",
    "krum_scores",
    "pairwise_squared_distances",
    "select_lowest",
    "select_lowest_rows",
]

_TIE_RTOL = 1e-9  # scores this close (relatively) count as tied


def pairwise_squared_distances(updates: UpdateMatrix) -> NDArray[np.float64]:
    """Return the float64 ``(n, n)`` matrix of ``||x_i - x_j||^2`` through the Gram matrix.

    The rows are centred on their mean and cast to float64 first, so that
    ``||x_i||^2 + ||x_j||^2 - 2 <x_i, x_j>`` does not cancel catastrophically for close,
    large updates. The Gram matrix is accumulated over cache-sized column blocks (one
    pass, ``O(n^2 + n * block)`` extra memory, a BLAS ``syrk`` per block), never as an
    ``(n, d)`` float64 copy. The diagonal is exactly 0 and no entry is negative.
    """
    gram, _, _ = centred_gram(updates)  # (n, n)
    return distances_from_gram(gram)


def distances_from_gram(gram: NDArray[np.float64]) -> NDArray[np.float64]:
    """Return ``G_ii + G_jj - 2 G_ij`` clipped at 0, with an exactly zero diagonal."""
    squared = np.diag(gram)  # (n,)
    distances = np.maximum(squared[:, None] + squared[None, :] - 2 * gram, 0.0)  # (n, n)
    np.fill_diagonal(distances, 0.0)
    return distances


def krum_scores(distances: NDArray[np.float64], num_neighbours: int) -> NDArray[np.float64]:
    """Return ``score(i) = sum of the num_neighbours smallest ||x_i - x_j||^2, j != i``.

    Parameters
    ----------
    distances:
        float64 ``(m, m)`` squared distances (zero diagonal).
    num_neighbours:
        ``1 <= k <= m - 1``; ``n - f - 2`` in Krum.

    Returns
    -------
    numpy.ndarray
        float64 ``(m,)``.
    """
    others = distances.copy()  # (m, m)
    np.fill_diagonal(others, np.inf)
    k = num_neighbours
    nearest = np.partition(others, k - 1, axis=1)[:, :k]  # (m, k)
    sums: NDArray[np.float64] = nearest.sum(axis=1)  # (m,)
    return sums


def select_lowest(scores: NDArray[np.float64], rows: UpdateMatrix, m: int) -> NDArray[np.intp]:
    """Return the increasing indices of the ``m`` lowest ``scores``, ties broken by content.

    Scores within a relative ``1e-9`` of the ``m``-th lowest count as tied (mutual nearest
    neighbours tie exactly in theory, and within rounding in practice); among tied ones the
    rows with the smallest raw bytes win. The choice therefore depends on the updates, not
    on the order they arrived in.

    Parameters
    ----------
    scores:
        float64 ``(k,)``.
    rows:
        float32 ``(k, d)``: the updates the scores belong to.
    m:
        ``1 <= m <= k``.
    """
    return select_lowest_rows(scores, rows, np.arange(len(scores)), m)


def select_lowest_rows(
    scores: NDArray[np.float64], updates: UpdateMatrix, rows: NDArray[np.intp], m: int
) -> NDArray[np.intp]:
    """:func:`select_lowest` for the updates ``updates[rows]``, without copying them.

    Returns positions into ``scores`` / ``rows`` exactly as
    ``select_lowest(scores, updates[rows], m)`` does; only the rows tied at the ``m``-th
    lowest score are read (for the tie-break), so a caller that scores a subset of the
    updates round after round (Bulyan) never copies that subset.
    """
    order = np.argsort(scores, kind="stable")  # (k,)
    threshold = float(scores[order[m - 1]])
    slack = _TIE_RTOL * abs(threshold)
    below = np.flatnonzero(scores < threshold - slack)  # (< m,)
    band = np.flatnonzero(np.abs(scores - threshold) <= slack)  # (>= m - len(below),)
    if len(below) + len(band) > m:
        raw = np.ascontiguousarray(updates[rows[band]])  # (b, d)
        keys = raw.view(np.dtype((np.void, raw.dtype.itemsize * raw.shape[1]))).ravel()  # (b,)
        band = band[np.argsort(keys, kind="stable")][: m - len(below)]
    return np.sort(np.concatenate([below, band]))


def check_krum_condition(rule: str, n: int, f: int) -> None:
    """Raise :class:`BreakdownError` unless ``n >= 2f + 3``."""
    if n < 2 * f + 3:
        raise BreakdownError(f"{rule} needs n >= 2f + 3, got n={n}, f={f}")


class Krum:
    """Krum: the update with the smallest sum of squared distances to its neighbours.

    With ``f = floor(max_byzantine_fraction * n)``,
    ``score(i) = sum_{j in N_i} ||x_i - x_j||^2`` over the ``n - f - 2`` updates ``j != i``
    closest to ``x_i``, and the output is ``x_{argmin score}`` (ties broken by the
    updates' content, not their arrival order). Needs ``n >= 2f + 3`` (breakdown
    condition; :class:`BreakdownError` otherwise). Not a (δ,c)-robust aggregator alone
    under heterogeneity (combine with bucketing). Weights do not enter the selection, and
    the output is one update, so they are accepted and validated but have no effect.

    Parameters
    ----------
    max_byzantine_fraction:
        Upper bound on the Byzantine fraction, in ``[0, 0.5)``.

    Notes
    -----
    The diagnostics hold the selected index and the Krum scores.
    """

    name: ClassVar[str] = "krum"
    stateful: ClassVar[bool] = False

    def __init__(self, max_byzantine_fraction: float = 0.2) -> None:
        self.max_byzantine_fraction = validate_fraction(
            "max_byzantine_fraction", max_byzantine_fraction
        )

    def __call__(
        self, updates: UpdateMatrix, weights: ArrayLike | None = None
    ) -> AggregationResult:
        """Aggregate float32 ``(n, d)`` updates; ``(n,)`` weights are validated only."""
        matrix = validate_updates(updates)
        validate_weights(weights, len(matrix))
        n = len(matrix)
        f = num_byzantine(n, self.max_byzantine_fraction)
        check_krum_condition(self.name, n, f)
        scores = krum_scores(pairwise_squared_distances(matrix), n - f - 2)  # (n,)
        best = int(select_lowest(scores, matrix, 1)[0])
        diagnostics = AggregationDiagnostics(selected=(best,), scores=scores)
        return AggregationResult(matrix[best].copy(), diagnostics)

    def __repr__(self) -> str:
        return f"Krum(max_byzantine_fraction={self.max_byzantine_fraction!r})"
