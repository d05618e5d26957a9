"""Bulyan.

El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of Distributed Learning in
Byzantium", ICML 2018.
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
    sorted_rows,
)
from byzedge.coordinator.aggregation._networks import sorting_network
from byzedge.coordinator.aggregation._parallel import map_column_ranges
from byzedge.coordinator.aggregation.base import (
    AggregationDiagnostics,
    AggregationResult,
    BreakdownError,
    UpdateMatrix,
    UpdateVector,
    Weights,
    num_byzantine,
    unless_uniform,
    validate_fraction,
    validate_updates,
    validate_weights,
)
from byzedge.coordinator.aggregation.krum import Distances, krum_scores, krum_select

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
    streaming: ClassVar[bool] = False
    needs_device_ids: ClassVar[bool] = False

    def __init__(self, max_byzantine_fraction: float = 0.2) -> None:
        self.max_byzantine_fraction = validate_fraction(
            "max_byzantine_fraction", max_byzantine_fraction
        )

    def __call__(
        self, updates: UpdateMatrix, weights: ArrayLike | None = None
    ) -> AggregationResult:
        """Aggregate float32 ``(n, d)`` updates with optional ``(n,)`` weights."""
        matrix = validate_updates(updates, check_finite=False)  # checked by the Gram matrix
        vector = validate_weights(weights, len(matrix))
        n = len(matrix)
        f = num_byzantine(n, self.max_byzantine_fraction)
        if n < 4 * f + 3:
            raise BreakdownError(f"bulyan needs n >= 4f + 3, got n={n}, f={f}")
        distances = Distances(matrix)  # also checks the updates for NaN/Inf
        chosen = _iterated_krum(distances, n, f)
        if chosen is None:  # a near-tie the float32 distances cannot settle
            distances.make_exact()
            chosen = _iterated_krum(distances, n, f)
            assert chosen is not None  # noqa: S101 (exact selections always decide)
        first_scores = krum_scores(distances.matrix, n - f - 2)  # (n,)
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


def _iterated_krum(distances: Distances, n: int, f: int) -> list[int] | None:
    """Bulyan's first step: ``θ = n - 2f`` rounds of Krum; ``None`` on an unsettled near-tie."""
    remaining = np.arange(n)
    chosen: list[int] = []
    for _ in range(n - 2 * f):  # θ selections; Python loop over rounds of Krum, not pairs
        m = len(remaining)
        if m == 1:
            best = 0
        else:
            k = min(max(m - f - 2, 1), m - 1)
            selection = krum_select(distances, remaining, k, 1)
            if selection is None:
                return None
            best = int(selection[1][0])
        chosen.append(int(remaining[best]))
        remaining = np.delete(remaining, best)
    return chosen


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
    tie at that boundary fall back to a stable argsort. Unweighted and with numba
    installed, a compiled sorting-network kernel does the same on all cores.
    """
    d = updates.shape[1]
    weights = unless_uniform(weights)
    if weights is None and _compiled.AVAILABLE:
        return _compiled_window_mean(updates, selected, beta)
    aggregate = np.empty(d, dtype=np.float32)
    for columns in column_blocks(d, SORT_COLUMNS):
        block = np.ascontiguousarray(updates[selected, columns].T)  # (width, θ)
        ordered = sorted_rows(block)  # (width, θ)
        median = median_of_sorted(ordered)  # (width,)
        if weights is None:
            aggregate[columns] = _window_mean(block, ordered, median, beta)
            continue
        distances = np.abs(block - median[:, None])  # (width, θ) float32
        bound = _beta_smallest(np.abs(ordered - median[:, None]), beta)  # (width, 1)
        kept = distances <= bound  # (width, θ)
        tied = np.flatnonzero(kept.sum(axis=1) != beta)
        if len(tied):
            order = np.argsort(distances[tied], axis=1, kind="stable")[:, :beta]
            mask = np.zeros((len(tied), block.shape[1]), dtype=bool)
            np.put_along_axis(mask, order, True, axis=1)
            kept[tied] = mask
        # Multiplying by 1.0 or 0.0 is exact; the kept values add up in float64.
        plain = np.einsum("ij,ij->i", block, kept.astype(np.float32), dtype=np.float64) / beta
        values = np.where(kept, block.astype(np.float64), 0.0)  # (width, θ)
        kept_weights = np.where(kept, weights, 0.0)  # (width, θ)
        total = kept_weights.sum(axis=1)  # (width,)
        weighted = (kept_weights * values).sum(axis=1)  # (width,)
        mixed = np.where(total > 0, weighted / np.where(total > 0, total, 1.0), plain)
        aggregate[columns] = mixed.astype(np.float32)
    return aggregate


def _compiled_window_mean(
    updates: UpdateMatrix, selected: NDArray[np.intp], beta: int
) -> UpdateVector:
    """Unweighted :func:`closest_to_median_mean` by the compiled sorting-network kernel.

    Columns where more than ``beta`` values tie for the nearest places are flagged by the
    kernel and redone here by the numpy path, which breaks such ties as the definition
    says (to the lower index).
    """
    d = updates.shape[1]
    aggregate = np.empty(d, dtype=np.float32)
    tied = np.zeros(d, dtype=bool)
    rows = np.ascontiguousarray(selected, dtype=np.int64)
    steps = sorting_network(len(rows))

    def part(start: int, stop: int) -> bool:
        return _compiled.window_columns(updates, rows, steps, beta, start, stop, aggregate, tied)

    map_column_ranges(d, part)  # finiteness was checked with the distances
    ties = np.flatnonzero(tied)
    if len(ties):
        block = np.ascontiguousarray(updates[np.ix_(selected, ties)].T)  # (t, θ)
        ordered = np.sort(block, axis=1)
        aggregate[ties] = _window_mean(block, ordered, median_of_sorted(ordered), beta)
    return aggregate


def _beta_smallest(spread: NDArray[np.float32], beta: int) -> NDArray[np.float32]:
    """Return the ``beta``-th smallest value of each row of ``spread``, as ``(width, 1)``.

    ``spread`` is ``|o - median|`` for rows ``o`` sorted increasingly: along a row it
    does not increase up to the median and does not decrease after it (float32 rounding
    is monotone, so this holds for the computed values too). The ``beta`` smallest
    values of such a V-shaped row form a contiguous window, and the largest value of a
    window is at one of its ends; so the ``beta``-th smallest is the least, over the
    ``θ - beta + 1`` windows, of the larger end. No second sort.
    """
    theta = spread.shape[1]
    ends = np.maximum(spread[:, : theta - beta + 1], spread[:, beta - 1 :])  # (width, windows)
    smallest: NDArray[np.float32] = ends.min(axis=1, keepdims=True)
    return smallest


def _window_mean(
    block: UpdateMatrix, ordered: UpdateMatrix, median: UpdateVector, beta: int
) -> UpdateVector:
    """Unweighted second step on one block: the float64 mean of the ``beta`` nearest values.

    In each sorted row the ``beta`` values nearest the median form a contiguous window
    (see :func:`_beta_smallest`), the first one whose larger end is least. Where a value
    just outside that window is exactly as far from the median as its farther end, more
    than ``beta`` values tie for the last places; those rows take the ``beta`` nearest by
    a stable argsort of the unsorted row (ties to the lower index), as the definition says.
    """
    width, theta = ordered.shape
    spread = np.abs(ordered - median[:, None])  # (width, θ) float32
    ends = np.maximum(spread[:, : theta - beta + 1], spread[:, beta - 1 :])  # (width, windows)
    start = ends.argmin(axis=1)  # (width,) first least window
    rows = np.arange(width)
    bound = ends[rows, start]  # (width,)
    tied = (start > 0) & (spread[rows, np.maximum(start - 1, 0)] == bound)
    after = start + beta
    tied |= (after < theta) & (spread[rows, np.minimum(after, theta - 1)] == bound)
    window = np.take_along_axis(ordered, start[:, None] + np.arange(beta), axis=1)  # (width, β)
    result = np.einsum("ij->i", window, dtype=np.float64) / beta  # (width,)
    if tied.any():
        which = np.flatnonzero(tied)
        values = block[which]  # (t, θ)
        nearest = np.argsort(np.abs(values - median[which, None]), axis=1, kind="stable")
        chosen = np.take_along_axis(values, nearest[:, :beta], axis=1)  # (t, β)
        result[which] = np.einsum("ij->i", chosen, dtype=np.float64) / beta
    aggregate: UpdateVector = result.astype(np.float32)
    return aggregate
