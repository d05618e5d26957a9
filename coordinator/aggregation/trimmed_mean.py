"""Coordinate-wise trimmed mean.

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
    sorted_rows,
    transposed,
)
from byzedge.coordinator.aggregation._kernels import all_finite
from byzedge.coordinator.aggregation._networks import sorting_network
from byzedge.coordinator.aggregation._parallel import map_column_ranges
from byzedge.coordinator.aggregation.base import (
    NON_FINITE_MESSAGE,
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

__all__ = ["TrimmedMean", "trimmed_mean"]

_COUNT_FLUSH = 60_000  # blocks between reductions of the uint16 tally (< 65,535)


def trimmed_mean(
    updates: UpdateMatrix,
    num_trimmed: int,
    weights: Weights | None = None,
    *,
    check_finite: bool = False,
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
    check_finite:
        Also raise ``ValueError`` on NaN/Inf entries, at no extra pass: numpy sorts NaN
        after every number, so a sorted row is finite exactly when its ends are.

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
    n = len(updates)
    b = num_trimmed
    if n <= 2 * b:
        raise BreakdownError(f"trimmed mean needs n > 2b, got n={n}, b={b}")
    if b == 0:
        if check_finite and not all_finite(updates):
            raise ValueError(NON_FINITE_MESSAGE)
        trimmed_share = np.zeros(n)
        if weights is None:
            return np.mean(updates, axis=0, dtype=np.float32), trimmed_share
        weighted = np.einsum("k,kd->d", weights, updates, dtype=np.float64)  # (d,)
        return (weighted / weights.sum()).astype(np.float32), trimmed_share
    weights = unless_uniform(weights)
    if _compiled.AVAILABLE:
        return _compiled_trimmed_mean(updates, b, weights, check_finite=check_finite)
    return _numpy_trimmed_mean(updates, b, weights, check_finite=check_finite)


def _numpy_trimmed_mean(
    updates: UpdateMatrix, b: int, weights: Weights | None, *, check_finite: bool
) -> tuple[UpdateVector, NDArray[np.float64]]:
    """:func:`trimmed_mean` for ``1 <= b``, ``n > 2b`` by numpy's sort (the reference)."""
    n, d = updates.shape
    kept_count = n - 2 * b
    aggregate = np.empty(d, dtype=np.float32)
    trimmed_counts = np.zeros(n, dtype=np.int64)
    tally = np.zeros((min(d, SORT_COLUMNS), n), dtype=np.uint16)  # (width, n) pending counts
    pending = 0
    for columns in column_blocks(d, SORT_COLUMNS):
        block = transposed(updates, columns)  # (width, n), contiguous
        ordered = sorted_rows(block)  # (width, n)
        if check_finite and not (
            np.isfinite(ordered[:, 0]).all() and np.isfinite(ordered[:, -1]).all()
        ):
            raise ValueError(NON_FINITE_MESSAGE)
        trimmed = _trimmed_mask(block, ordered, b)  # (width, n)
        # Per-update counts: add the masks elementwise (cheap, contiguous) and reduce
        # over the rows only every _COUNT_FLUSH blocks, before uint16 could overflow.
        tally[: len(trimmed)] += trimmed
        pending += 1
        if pending == _COUNT_FLUSH:
            trimmed_counts += tally.sum(axis=0, dtype=np.int64)
            tally[:] = 0
            pending = 0
        if weights is None:
            kept_sum = np.einsum("ij->i", ordered[:, b : n - b], dtype=np.float64)  # (width,)
            aggregate[columns] = (kept_sum / kept_count).astype(np.float32)
            continue
        kept_weights = np.where(trimmed, 0.0, weights)  # (width, n)
        total = kept_weights.sum(axis=1)  # (width,)
        weighted = np.einsum("kn,kn->k", kept_weights, block, dtype=np.float64)  # (width,)
        plain = np.where(trimmed, 0.0, block).sum(axis=1, dtype=np.float64) / kept_count
        with np.errstate(divide="ignore", invalid="ignore"):
            mixed = np.where(total > 0, weighted / np.where(total > 0, total, 1.0), plain)
        aggregate[columns] = mixed.astype(np.float32)
    trimmed_counts += tally.sum(axis=0, dtype=np.int64)
    return aggregate, trimmed_counts / d


def _compiled_trimmed_mean(
    updates: UpdateMatrix, b: int, weights: Weights | None, *, check_finite: bool
) -> tuple[UpdateVector, NDArray[np.float64]]:
    """:func:`trimmed_mean` by the compiled sorting-network kernels (``1 <= b``).

    The kernels leave out of their trim counts the columns where a kept value equals a
    trimming boundary (which of the equal values is trimmed is the stable sort's rule);
    those few columns are redone here by the numpy path: their counts, and with weights
    also their values (the kept value's weight depends on which one is kept).
    """
    n, d = updates.shape
    aggregate = np.empty(d, dtype=np.float32)
    tied = np.zeros(d, dtype=bool)
    steps = sorting_network(n)
    rows = np.arange(n)
    normalised = None if weights is None else weights / weights.sum()  # (n,)

    def part(start: int, stop: int) -> tuple[bool, NDArray[np.int64]]:
        counts = np.zeros(n, dtype=np.int64)
        if normalised is None:
            finite = _compiled.trimmed_columns(
                updates, rows, steps, b, start, stop, aggregate, counts, tied
            )
        else:
            finite = _compiled.weighted_trimmed_columns(
                updates, normalised, steps, b, start, stop, aggregate, counts, tied
            )
        return finite, counts

    parts = map_column_ranges(d, part)
    if check_finite and not all(finite for finite, _ in parts):
        raise ValueError(NON_FINITE_MESSAGE)
    trimmed_counts = np.sum([counts for _, counts in parts], axis=0)
    ties = np.flatnonzero(tied)
    if len(ties):
        if weights is None:
            block = np.ascontiguousarray(updates[:, ties].T)  # (t, n)
            trimmed_counts += _trimmed_mask(block, np.sort(block, axis=1), b).sum(axis=0)
        else:
            sub = np.ascontiguousarray(updates[:, ties])  # (n, t)
            values, share = _numpy_trimmed_mean(sub, b, weights, check_finite=False)
            aggregate[ties] = values
            trimmed_counts += np.rint(share * len(ties)).astype(np.int64)
    return aggregate, trimmed_counts / d


def _trimmed_mask(block: UpdateMatrix, ordered: UpdateMatrix, b: int) -> NDArray[np.bool_]:
    """Return which entries of each row of ``block`` a stable sort puts in the trimmed tails.

    ``ordered`` is ``block`` with each row sorted; ``1 <= b`` and ``n > 2b``. Row ``k``
    trims its ``b`` smallest and ``b`` largest values; among values tied at a tail's
    boundary, a stable sort trims the lowest-indexed ones at the bottom and the
    highest-indexed ones at the top. Rows without such ties (almost all of them on real
    updates) are decided by comparisons with the two boundary values; the others by a
    stable argsort of just those rows.
    """
    n = block.shape[1]
    low = ordered[:, b - 1 : b]  # (width, 1): largest value trimmed at the bottom
    high = ordered[:, n - b : n - b + 1]  # (width, 1): smallest value trimmed at the top
    trimmed = block <= low  # (width, n)
    trimmed |= block >= high
    # A row has exactly b values <= low (and b >= high) unless a value equal to the
    # boundary lies just inside it.
    tied = (ordered[:, b] == low[:, 0]) | (ordered[:, n - b - 1] == high[:, 0])  # (width,)
    if tied.any():
        rows = np.flatnonzero(tied)
        order = np.argsort(block[rows], axis=1, kind="stable")  # (t, n)
        mask = np.zeros((len(rows), n), dtype=bool)
        np.put_along_axis(mask, order[:, :b], True, axis=1)
        np.put_along_axis(mask, order[:, n - b :], True, axis=1)
        trimmed[rows] = mask
    return trimmed


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
    streaming: ClassVar[bool] = False
    needs_device_ids: ClassVar[bool] = False

    def __init__(self, trim_fraction: float = 0.2) -> None:
        self.trim_fraction = validate_fraction("trim_fraction", trim_fraction)

    def num_trimmed(self, n: int) -> int:
        """Return ``b = floor(trim_fraction * n)`` for ``n`` updates."""
        return num_byzantine(n, self.trim_fraction)

    def __call__(
        self, updates: UpdateMatrix, weights: ArrayLike | None = None
    ) -> AggregationResult:
        """Aggregate float32 ``(n, d)`` updates with optional ``(n,)`` weights."""
        matrix = validate_updates(updates, check_finite=False)  # checked while sorting
        vector = validate_weights(weights, len(matrix))
        aggregate, share = trimmed_mean(
            matrix, self.num_trimmed(len(matrix)), vector, check_finite=True
        )
        return AggregationResult(aggregate, AggregationDiagnostics(scores=share))

    def __repr__(self) -> str:
        return f"TrimmedMean(trim_fraction={self.trim_fraction!r})"
