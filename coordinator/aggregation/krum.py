"""Krum.

Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries: Byzantine
Tolerant Gradient Descent", NeurIPS 2017.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from byzedge.coordinator.aggregation import _compiled
from byzedge.coordinator.aggregation._columns import (
    GRAM32_RTOL,
    GRAM_COLUMNS,
    centred_gram,
    centred_gram32,
    column_blocks,
)
from byzedge.coordinator.aggregation._parallel import map_column_ranges
from byzedge.coordinator.aggregation.base import (
    AggregationDiagnostics,
    AggregationResult,
    BreakdownError,
    UpdateMatrix,
    ensure_finite,
    num_byzantine,
    validate_fraction,
    validate_updates,
    validate_weights,
)

__all__ = [
    "Distances",
    "Krum",
    "distances_from_gram",
    "krum_scores",
    "pairwise_squared_distances",
    "select_lowest",
    "select_lowest_rows",
]

_TIE_RTOL = 1e-9  # scores this close (relatively) count as tied

FAST_GRAM_MIN_ENTRIES = 1 << 20
"""From this many entries ``n * d`` on, distances come from a float32 Gram matrix first."""


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


class Distances:
    """Squared pairwise distances of a round, fast where that is safe, exact otherwise.

    Large rounds first get their distances from a float32 Gram matrix
    (:func:`~byzedge.coordinator.aggregation._columns.centred_gram32`, about twice as fast as
    float64 and reading the updates once) together with a per-entry error bound. A
    selection made on them is kept only if it is *clear*: every chosen score plus its
    bound is below every other score minus its bound, so the float64 scores would
    choose the same updates. Otherwise (a near-tie, which the 1e-9 tie rule and the
    content tie-break must settle) the distances are recomputed exactly with
    :func:`pairwise_squared_distances` and the selection is made again on them. Small
    rounds are exact from the start.

    Building it also checks the updates for NaN/Inf (a non-finite entry makes the Gram
    matrix non-finite), so callers validate with ``check_finite=False``.
    """

    def __init__(self, updates: UpdateMatrix) -> None:
        self.updates = updates
        self.exact = updates.size < FAST_GRAM_MIN_ENTRIES
        gram = centred_gram(updates)[0] if self.exact else centred_gram32(updates)
        if not ensure_finite(gram, updates):  # the float32 products overflowed
            self.exact = True
            gram = centred_gram(updates)[0]
            ensure_finite(gram, updates)
        self.matrix = distances_from_gram(gram)  # (n, n)
        self._refined = np.zeros(len(updates), dtype=bool)  # rows made exact by refine()
        if self.exact:
            self.bounds = np.zeros_like(self.matrix)
        else:
            root = np.sqrt(np.maximum(np.diag(gram), 0.0))  # (n,) ||y_i||
            self.bounds = GRAM32_RTOL * (root[:, None] + root[None, :]) ** 2  # (n, n)
            np.fill_diagonal(self.bounds, 0.0)

    def refine(self, rows: NDArray[np.intp]) -> None:
        """Make the distances from ``rows`` to every update exact (float64 differences).

        One float64 pass over the updates for all the rows: cheaper than the whole exact
        Gram matrix when a near-tie involves only a few candidates (identical Byzantine
        updates, for one, tie exactly).
        """
        todo = [int(r) for r in rows if not self._refined[r]]
        if self.exact or not todo:
            return
        squared = _exact_row_distances(self.updates, np.array(todo, dtype=np.int64))  # (c, n)
        for position, row in enumerate(todo):
            squared[position, row] = 0.0
            self.matrix[row, :] = squared[position]
            self.matrix[:, row] = squared[position]
            self.bounds[row, :] = 0.0
            self.bounds[:, row] = 0.0
            self._refined[row] = True

    def make_exact(self) -> None:
        """Replace the float32-based distances by exact float64 ones."""
        if not self.exact:
            self.exact = True
            self.matrix = pairwise_squared_distances(self.updates)
            self.bounds = np.zeros_like(self.matrix)

    def score_bounds(self, rows: NDArray[np.intp], num_neighbours: int) -> NDArray[np.float64]:
        """Return a bound on each Krum score's error among ``rows`` (0 when exact)."""
        if self.exact:
            return np.zeros(len(rows))
        bounds = self.bounds[np.ix_(rows, rows)]  # (m, m)
        k = num_neighbours
        largest = -np.partition(-bounds, k - 1, axis=1)[:, :k]  # (m, k)
        result: NDArray[np.float64] = largest.sum(axis=1)
        return result


def _exact_row_distances(updates: UpdateMatrix, rows: NDArray[np.int64]) -> NDArray[np.float64]:
    """Return float64 ``(c, n)`` ``||x_r - x_i||^2`` for each ``r`` in ``rows``, one pass.

    Differences are taken in float64, so these are exact up to the final sums' rounding.
    """
    n, d = updates.shape
    if _compiled.AVAILABLE:

        def distances_in(start: int, stop: int) -> NDArray[np.float64]:
            partial = np.zeros((len(rows), n))
            _compiled.row_distances_columns(updates, rows, start, stop, partial)
            return partial

        return np.sum(map_column_ranges(d, distances_in), axis=0)  # type: ignore[no-any-return]
    squared = np.zeros((len(rows), n))
    for columns in column_blocks(d, GRAM_COLUMNS):
        block = updates[:, columns].astype(np.float64)  # (n, width)
        for position, row in enumerate(rows):
            difference = block - block[row]  # (n, width)
            squared[position] += np.einsum("ij,ij->i", difference, difference)
    return squared


def is_clear(scores: NDArray[np.float64], bounds: NDArray[np.float64], m: int) -> bool:
    """Return whether the ``m`` lowest ``scores`` stay the ``m`` lowest within ``bounds``."""
    if m >= len(scores):
        return True
    order = np.argsort(scores, kind="stable")
    chosen, others = order[:m], order[m:]
    return bool(np.max(scores[chosen] + bounds[chosen]) < np.min(scores[others] - bounds[others]))


def krum_select(
    distances: Distances, rows: NDArray[np.intp], num_neighbours: int, m: int
) -> tuple[NDArray[np.float64], NDArray[np.intp]] | None:
    """Return the Krum scores of ``rows`` and the positions of the ``m`` lowest, or None.

    On float32-based distances, a selection that is not clear (see :class:`Distances`)
    gets its few candidates (the rows whose score could be among the ``m`` lowest)
    refined to exact distances, and is accepted once every score that is still inexact
    lies clear of the tie band around the ``m``-th lowest, which is then exact: the exact
    distances would select the same rows, ties included. ``None`` means that did not
    settle it; the caller then calls :meth:`Distances.make_exact` and selects again
    (exact selections never fail).
    """
    table = np.ix_(rows, rows)
    scores = krum_scores(distances.matrix[table], num_neighbours)  # (m,)
    if distances.exact:
        return scores, select_lowest_rows(scores, distances.updates, rows, m)
    bounds = distances.score_bounds(rows, num_neighbours)
    if is_clear(scores, bounds, m):
        return scores, select_lowest_rows(scores, distances.updates, rows, m)
    upper = scores + bounds
    threshold = float(np.partition(upper, m - 1)[m - 1])
    candidates = np.flatnonzero(scores - bounds <= threshold * (1 + 4 * _TIE_RTOL))
    if len(candidates) > max(4, len(rows) // 4):
        return None
    distances.refine(rows[candidates])
    scores = krum_scores(distances.matrix[table], num_neighbours)
    bounds = distances.score_bounds(rows, num_neighbours)
    if not _settled(scores, bounds, m):
        return None
    return scores, select_lowest_rows(scores, distances.updates, rows, m)


def _settled(scores: NDArray[np.float64], bounds: NDArray[np.float64], m: int) -> bool:
    """Whether the ``m``-th lowest score is exact and every inexact one is clear of its tie band."""
    order = np.argsort(scores, kind="stable")
    edge = order[m - 1]
    if bounds[edge] > 0:
        return False
    threshold = float(scores[edge])
    band = _TIE_RTOL * abs(threshold)
    clear = (scores + bounds < threshold - band) | (scores - bounds > threshold + band)
    return bool(clear[bounds > 0].all())


def krum_select_checked(
    distances: Distances, rows: NDArray[np.intp], num_neighbours: int, m: int
) -> tuple[NDArray[np.float64], NDArray[np.intp]]:
    """:func:`krum_select`, recomputing the distances exactly when it cannot decide."""
    result = krum_select(distances, rows, num_neighbours, m)
    if result is None:
        distances.make_exact()
        result = krum_select(distances, rows, num_neighbours, m)
        assert result is not None  # noqa: S101 (exact selections always decide)
    return result


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
    streaming: ClassVar[bool] = False
    needs_device_ids: ClassVar[bool] = False

    def __init__(self, max_byzantine_fraction: float = 0.2) -> None:
        self.max_byzantine_fraction = validate_fraction(
            "max_byzantine_fraction", max_byzantine_fraction
        )

    def __call__(
        self, updates: UpdateMatrix, weights: ArrayLike | None = None
    ) -> AggregationResult:
        """Aggregate float32 ``(n, d)`` updates; ``(n,)`` weights are validated only."""
        matrix = validate_updates(updates, check_finite=False)  # checked by the Gram matrix
        validate_weights(weights, len(matrix))
        n = len(matrix)
        f = num_byzantine(n, self.max_byzantine_fraction)
        check_krum_condition(self.name, n, f)
        scores, chosen = krum_select_checked(Distances(matrix), np.arange(n), n - f - 2, 1)
        best = int(chosen[0])
        diagnostics = AggregationDiagnostics(selected=(best,), scores=scores)
        return AggregationResult(matrix[best].copy(), diagnostics)

    def __repr__(self) -> str:
        return f"Krum(max_byzantine_fraction={self.max_byzantine_fraction!r})"
