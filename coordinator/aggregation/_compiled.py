"""Compiled column kernels (numba) for the rules that read a round many times over.

The numpy implementations elsewhere in this package are the reference; these kernels
compute the same quantities in one compiled pass over a range of columns, so the rules
call them when numba is installed (the coordinator extra installs it) and fall back to
numpy otherwise. Every kernel works on the columns ``[start, stop)`` of the float32
``(n, d)`` update matrix and writes only those columns of its outputs (plus per-thread
partial sums), so :mod:`byzedge.coordinator.aggregation._parallel` can run disjoint column ranges
on several cores at once; the kernels release the GIL.

- The per-coordinate rules (:func:`median_columns`, :func:`trimmed_columns`,
  :func:`window_columns`) copy ``BLOCK`` columns of the chosen rows into a small buffer
  that stays in L1 cache and sort all its columns at once with a sorting network
  (:mod:`byzedge.coordinator.aggregation._networks`): each compare-exchange step is a vectorised
  min/max across the buffer's columns, with no data-dependent branch. They also prove the
  values finite on the way (``v - v`` is 0 exactly for finite ``v``), so callers skip a
  separate NaN/Inf pass.
- The clipping rules (:func:`squared_distances_columns`, :func:`clipped_step_columns`)
  fuse their arithmetic into single passes over the rows, with float64 accumulators.

Columns whose answer depends on how ties are broken (a value equal to a trimming or a
window boundary) are flagged, and the caller recomputes just those with the numpy
reference, which states the tie rule.

Private to :mod:`byzedge.coordinator.aggregation`.
"""

# Kernels take their arrays positionally: numba compiles calls with keyword arguments
# only for functions it can see at compile time, and these are called from Python.
# ruff: noqa: PLR0917

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar, cast

import numpy as np

numba: ModuleType | None
try:  # the coordinator extra installs numba; the edge extra never does
    numba = importlib.import_module("numba")
except ImportError:  # pragma: no cover - exercised only without the coordinator extra
    numba = None

__all__ = [
    "AVAILABLE",
    "BLOCK",
    "clipped_step_columns",
    "median_columns",
    "row_distances_columns",
    "squared_distances_columns",
    "trimmed_columns",
    "weighted_median_columns",
    "weighted_trimmed_columns",
    "window_columns",
]

AVAILABLE = numba is not None and os.environ.get("BYZEDGE_NO_NUMBA", "") in ("", "0")
"""Whether the compiled kernels are used (``BYZEDGE_NO_NUMBA=1`` forces the numpy path)."""

BLOCK = 128
"""Columns sorted together: ``n x 128`` float32 (25 KB at n = 50) stay in L1 cache."""

_STRIP = 1024
"""Columns per strip in the distance kernels."""

_F = TypeVar("_F", bound=Callable[..., Any])


def _compiled(function: _F) -> _F:
    """Compile ``function`` with numba (no GIL, cached on disk); unchanged without numba."""
    if numba is None:  # pragma: no cover - the numpy path is used instead
        return function
    return cast(_F, numba.njit(nogil=True, cache=True, boundscheck=False)(function))


def _inlined(function: _F) -> _F:
    """Compile a helper that numba inlines into its callers."""
    if numba is None:  # pragma: no cover
        return function
    compile_inline = numba.njit(nogil=True, cache=True, boundscheck=False, inline="always")
    return cast(_F, compile_inline(function))


@_inlined
def _exchange(low: Any, high: Any, smaller: Any, larger: Any) -> None:
    """Compare-exchange two buffer rows column by column (min to ``low``, max to ``high``).

    The results go through two scratch rows first: with ``low`` and ``high`` being views of
    one buffer, writing them in place keeps LLVM from vectorising the loop.
    """
    for c in range(low.shape[0]):
        u = low[c]
        v = high[c]
        smaller[c] = u if u < v else v
        larger[c] = v if u < v else u
    for c in range(low.shape[0]):
        low[c] = smaller[c]
        high[c] = larger[c]


@_inlined
def _load_and_sort(
    updates: Any,
    rows: Any,
    steps: Any,
    start: int,
    width: int,
    block: Any,
    check: Any,
    scratch: Any,
) -> None:
    """Copy columns ``[start, start + width)`` of ``updates[rows]`` into ``block``, sort them.

    Adds ``v - v`` of every value to ``check`` (it stays 0 only if all are finite);
    ``scratch`` is a ``(2, BLOCK)`` work area.
    Columns of ``block`` beyond ``width`` hold stale values that are sorted and ignored.
    """
    for r in range(rows.shape[0]):
        # Slices first: an index like ``start + c`` could be negative for numba, whose
        # wraparound test then keeps the loop from vectorising.
        source = updates[rows[r], start : start + width]
        target = block[r]
        for c in range(width):
            value = source[c]
            target[c] = value
            check[c] += value - value
    for s in range(steps.shape[0]):
        _exchange(block[steps[s, 0]], block[steps[s, 1]], scratch[0], scratch[1])


@_inlined
def _add_squared_differences(row: Any, centre: Any, lanes: Any) -> None:
    """``lanes[c] += (row[c] - centre[c])^2`` in float64, for every column ``c`` of ``row``."""
    for c in range(row.shape[0]):
        difference = np.float64(row[c]) - np.float64(centre[c])
        lanes[c] += difference * difference


@_inlined
def _finite(check: Any) -> bool:
    for c in range(BLOCK):  # noqa: SIM110 (numba compiles no generator expressions)
        if check[c] != 0:
            return False
    return True


@_compiled
def median_columns(updates: Any, rows: Any, steps: Any, start: int, stop: int, out: Any) -> bool:
    """Write the median of ``updates[rows]`` over columns ``[start, stop)`` into ``out``.

    ``steps`` must sort (at least) the middle wires; for an even count the median is the
    float32 ``(a + b) / 2`` of the two middle values, as :func:`numpy.median` computes it.
    Returns whether every value read was finite.
    """
    n = rows.shape[0]
    block = np.zeros((n, BLOCK), np.float32)
    check = np.zeros(BLOCK, np.float32)
    scratch = np.zeros((2, BLOCK), np.float32)
    half = n // 2
    two = np.float32(2)
    for first in range(start, stop, BLOCK):
        width = min(BLOCK, stop - first)
        _load_and_sort(updates, rows, steps, first, width, block, check, scratch)
        target = out[first : first + width]
        middle = block[half]
        if n % 2:
            for c in range(width):
                target[c] = middle[c]
        else:
            below = block[half - 1]
            for c in range(width):
                target[c] = (below[c] + middle[c]) / two
    return _finite(check)


@_inlined
def _exchange_carrying(
    low: Any, high: Any, low_weight: Any, high_weight: Any, scratch: Any, spare: Any
) -> None:
    """:func:`_exchange` that moves each value's weight along with it.

    Equal values stay where they are (only a strictly larger value moves up), so equal
    values keep their weights in place.
    """
    for c in range(low.shape[0]):
        u = low[c]
        v = high[c]
        swap = v < u
        scratch[0, c] = v if swap else u
        scratch[1, c] = u if swap else v
        a = low_weight[c]
        b = high_weight[c]
        spare[0, c] = b if swap else a
        spare[1, c] = a if swap else b
    for c in range(low.shape[0]):
        low[c] = scratch[0, c]
        high[c] = scratch[1, c]
        low_weight[c] = spare[0, c]
        high_weight[c] = spare[1, c]


@_inlined
def _load_and_sort_carrying(
    updates: Any,
    weights: Any,
    steps: Any,
    start: int,
    width: int,
    block: Any,
    carried: Any,
    check: Any,
    scratch: Any,
    spare: Any,
) -> None:
    """:func:`_load_and_sort` for all rows, each value carrying its row's weight.

    ``carried`` (float64, like ``block``) receives the weights; ``spare`` is a float64
    ``(2, BLOCK)`` work area.
    """
    for r in range(updates.shape[0]):
        source = updates[r, start : start + width]
        target = block[r]
        for c in range(width):
            value = source[c]
            target[c] = value
            check[c] += value - value
        carried[r, :] = weights[r]
    for s in range(steps.shape[0]):
        a = steps[s, 0]
        b = steps[s, 1]
        _exchange_carrying(block[a], block[b], carried[a], carried[b], scratch, spare)


@_inlined
def _trim_bounds_and_counts(
    updates: Any,
    rows: Any,
    block: Any,
    trim: int,
    first: int,
    width: int,
    counts: Any,
    tied: Any,
    bounds: Any,
    open_column: Any,
) -> None:
    """Flag tied columns of a sorted ``block`` and count each row's trimmed values.

    A column is tied when a kept value equals a trimmed one (``tied[first + c]``); its
    counts are left to the caller. Otherwise row ``r`` gains one count for each column
    where its value is at most the largest bottom-trimmed value or at least the smallest
    top-trimmed one. ``bounds`` is a float32 ``(2, BLOCK)`` work area.
    """
    n = rows.shape[0]
    low = bounds[0]
    high = bounds[1]
    for c in range(width):
        low[c] = block[trim - 1, c]
        high[c] = block[n - trim, c]
        is_tied = block[trim, c] == low[c] or block[n - trim - 1, c] == high[c]
        tied[first + c] = is_tied
        open_column[c] = 0 if is_tied else 1
    for r in range(n):
        source = updates[rows[r], first : first + width]
        total = 0
        for c in range(width):
            value = source[c]
            outside = (value <= low[c]) | (value >= high[c])
            total += outside * open_column[c]
        counts[r] += total


@_compiled
def weighted_median_columns(
    updates: Any, weights: Any, steps: Any, start: int, stop: int, out: Any
) -> bool:
    """Weighted median of the rows over columns ``[start, stop)``, written to ``out``.

    ``weights`` are float64, normalised to sum to 1. Per column the values are sorted
    with their weights; the lower weighted median is the first value whose cumulative
    weight reaches ``1/2`` and the upper the first whose cumulative weight exceeds it
    (both within ``1e-12``; the first value where none does), and the output is their
    float64 midpoint as float32, as
    :func:`~byzedge.coordinator.aggregation.coordinate_median.coordinate_median` defines it.
    Which of several equal values carries which weight does not change the answer. Returns
    whether every value read was finite. ``steps`` must fully sort the rows.
    """
    n = updates.shape[0]
    block = np.zeros((n, BLOCK), np.float32)
    carried = np.zeros((n, BLOCK))
    check = np.zeros(BLOCK, np.float32)
    scratch = np.zeros((2, BLOCK), np.float32)
    spare = np.zeros((2, BLOCK))
    cumulative = np.zeros(BLOCK)
    low = np.zeros(BLOCK)
    high = np.zeros(BLOCK)
    have_low = np.zeros(BLOCK, np.bool_)
    have_high = np.zeros(BLOCK, np.bool_)
    below = 0.5 - 1e-12
    above = 0.5 + 1e-12
    for first in range(start, stop, BLOCK):
        width = min(BLOCK, stop - first)
        _load_and_sort_carrying(
            updates, weights, steps, first, width, block, carried, check, scratch, spare
        )
        cumulative[:] = 0.0
        have_low[:] = False
        have_high[:] = False
        for c in range(width):  # where no cumulative weight qualifies: the first value
            low[c] = block[0, c]
            high[c] = block[0, c]
        for r in range(n):
            for c in range(width):
                cumulative[c] += carried[r, c]
                value = np.float64(block[r, c])
                if not have_low[c] and cumulative[c] >= below:
                    low[c] = value
                    have_low[c] = True
                if not have_high[c] and cumulative[c] > above:
                    high[c] = value
                    have_high[c] = True
        target_out = out[first : first + width]
        for c in range(width):
            target_out[c] = np.float32((low[c] + high[c]) / 2)
    return _finite(check)


@_compiled
def trimmed_columns(
    updates: Any,
    rows: Any,
    steps: Any,
    trim: int,
    start: int,
    stop: int,
    out: Any,
    counts: Any,
    tied: Any,
) -> bool:
    """Trimmed mean of ``updates[rows]`` over columns ``[start, stop)``, with trim counts.

    Per column: sort, drop ``trim`` values from each end, write the float64 mean of the
    rest (as float32) to ``out``. ``counts[r]`` (int64) gains the number of those columns
    on which row ``r`` was trimmed; a column where a kept value equals a trimmed boundary
    value gets ``tied[column] = True`` and no counts (which of the equal values a stable
    sort trims is the caller's to decide). ``steps`` must fully sort the rows. Returns
    whether every value read was finite.
    """
    n = rows.shape[0]
    block = np.zeros((n, BLOCK), np.float32)
    check = np.zeros(BLOCK, np.float32)
    scratch = np.zeros((2, BLOCK), np.float32)
    sums = np.zeros(BLOCK)
    bounds = np.zeros((2, BLOCK), np.float32)
    open_column = np.zeros(BLOCK, np.int64)
    kept = n - 2 * trim
    for first in range(start, stop, BLOCK):
        width = min(BLOCK, stop - first)
        _load_and_sort(updates, rows, steps, first, width, block, check, scratch)
        sums[:] = 0.0
        for r in range(trim, n - trim):
            for c in range(width):
                sums[c] += block[r, c]
        for c in range(width):
            out[first + c] = sums[c] / kept
        _trim_bounds_and_counts(
            updates, rows, block, trim, first, width, counts, tied, bounds, open_column
        )
    return _finite(check)


@_compiled
def weighted_trimmed_columns(
    updates: Any,
    weights: Any,
    steps: Any,
    trim: int,
    start: int,
    stop: int,
    out: Any,
    counts: Any,
    tied: Any,
) -> bool:
    """:func:`trimmed_columns` with float64 ``weights``: the kept values' weighted mean.

    The values are sorted with their weights; the ``n - 2 trim`` middle values are
    averaged with their weights in float64, or plainly where those weights sum to 0.
    Columns where a kept value equals a trimmed one get ``tied[column] = True``: there
    the stable sort's rule decides which of the equal values (and so which weight) is
    kept, and the caller recomputes the whole column. Counts as
    :func:`trimmed_columns`. ``steps`` must fully sort the rows.
    """
    n = updates.shape[0]
    block = np.zeros((n, BLOCK), np.float32)
    carried = np.zeros((n, BLOCK))
    check = np.zeros(BLOCK, np.float32)
    scratch = np.zeros((2, BLOCK), np.float32)
    spare = np.zeros((2, BLOCK))
    weighted = np.zeros(BLOCK)
    total = np.zeros(BLOCK)
    plain = np.zeros(BLOCK)
    bounds = np.zeros((2, BLOCK), np.float32)
    open_column = np.zeros(BLOCK, np.int64)
    rows = np.arange(n)
    kept = n - 2 * trim
    for first in range(start, stop, BLOCK):
        width = min(BLOCK, stop - first)
        _load_and_sort_carrying(
            updates, weights, steps, first, width, block, carried, check, scratch, spare
        )
        weighted[:] = 0.0
        total[:] = 0.0
        plain[:] = 0.0
        for r in range(trim, n - trim):
            for c in range(width):
                value = np.float64(block[r, c])
                weighted[c] += carried[r, c] * value
                total[c] += carried[r, c]
                plain[c] += value
        target_out = out[first : first + width]
        for c in range(width):
            mean = weighted[c] / total[c] if total[c] > 0 else plain[c] / kept
            target_out[c] = np.float32(mean)
        _trim_bounds_and_counts(
            updates, rows, block, trim, first, width, counts, tied, bounds, open_column
        )
    return _finite(check)


@_compiled
def window_columns(
    updates: Any, rows: Any, steps: Any, beta: int, start: int, stop: int, out: Any, tied: Any
) -> bool:
    """Bulyan's second step over columns ``[start, stop)`` of ``updates[rows]``.

    Per column: the mean (float64, written as float32) of the ``beta`` values nearest the
    column's median. In sorted order those form a contiguous window, the first whose
    larger end distance ``max(|o_s - m|, |o_(s+beta-1) - m|)`` is least. A column where
    the value just outside that window is exactly as far from the median gets
    ``tied[column] = True`` (more than ``beta`` values tie for the last places). ``steps``
    must fully sort the rows. Returns whether every value read was finite.
    """
    theta = rows.shape[0]
    block = np.zeros((theta, BLOCK), np.float32)
    check = np.zeros(BLOCK, np.float32)
    scratch = np.zeros((2, BLOCK), np.float32)
    median = np.zeros(BLOCK, np.float32)
    best = np.zeros(BLOCK, np.float32)
    where = np.zeros(BLOCK, np.int64)
    half = theta // 2
    two = np.float32(2)
    for first in range(start, stop, BLOCK):
        width = min(BLOCK, stop - first)
        _load_and_sort(updates, rows, steps, first, width, block, check, scratch)
        for c in range(width):
            if theta % 2:
                median[c] = block[half, c]
            else:
                median[c] = (block[half - 1, c] + block[half, c]) / two
            best[c] = np.inf
            where[c] = 0
        for s in range(theta - beta + 1):
            for c in range(width):
                end = max(abs(block[s, c] - median[c]), abs(block[s + beta - 1, c] - median[c]))
                if end < best[c]:
                    best[c] = end
                    where[c] = s
        for c in range(width):
            s = where[c]
            total = 0.0
            for r in range(s, s + beta):
                total += block[r, c]
            out[first + c] = total / beta
            before = s > 0 and abs(block[s - 1, c] - median[c]) == best[c]
            after = s + beta < theta and abs(block[s + beta, c] - median[c]) == best[c]
            tied[first + c] = before or after
    return _finite(check)


@_compiled
def squared_distances_columns(
    updates: Any, centre: Any, start: int, stop: int, squared: Any
) -> None:
    """Add ``sum_j (x_ij - c_j)^2`` over columns ``[start, stop)`` to ``squared[i]`` (float64).

    Differences and squares are taken in float64, so nothing overflows; a NaN or Inf
    value makes its row's sum non-finite.
    """
    n = updates.shape[0]
    # One accumulator lane per strip column and row (n x 1024 float64 stay in L2): the
    # inner loop vectorises, and each row is summed across lanes once, at the end.
    partial = np.zeros((n, _STRIP))
    for first in range(start, stop, _STRIP):
        width = min(_STRIP, stop - first)
        middle = centre[first : first + width]
        for r in range(n):
            _add_squared_differences(updates[r, first : first + width], middle, partial[r])
    for r in range(n):
        squared[r] += partial[r].sum()


@_compiled
def row_distances_columns(updates: Any, centres: Any, start: int, stop: int, squared: Any) -> None:
    """Add ``sum_j (x_ij - x_kj)^2`` over columns ``[start, stop)`` to ``squared[p, i]``.

    ``k = centres[p]``: the exact (float64) squared distances from a few chosen rows to
    every row, with each strip of the updates read once for all of them.
    """
    n = updates.shape[0]
    m = centres.shape[0]
    partial = np.zeros((m, n, _STRIP))  # lanes as in squared_distances_columns
    for first in range(start, stop, _STRIP):
        width = min(_STRIP, stop - first)
        for p in range(m):
            centre = updates[centres[p], first : first + width]
            for r in range(n):
                _add_squared_differences(updates[r, first : first + width], centre, partial[p, r])
    for p in range(m):
        for r in range(n):
            squared[p, r] += partial[p, r].sum()


@_compiled
def clipped_step_columns(
    updates: Any,
    centre: Any,
    coefficients: Any,
    start: int,
    stop: int,
    moved: Any,
    squared: Any,
    with_distances: bool,
) -> None:
    """``moved = c + sum_i a_i (x_i - c)`` over columns ``[start, stop)``; optional distances.

    The weighted sum of the differences accumulates in float64 per column. With
    ``with_distances``, ``squared[i]`` then gains ``sum_j (x_ij - moved_j)^2`` (float64)
    over the same columns while they are in cache.
    """
    n = updates.shape[0]
    total = np.zeros(_STRIP)
    partial = np.zeros((n, _STRIP))  # lanes as in squared_distances_columns
    for first in range(start, stop, _STRIP):
        width = min(_STRIP, stop - first)
        middle = centre[first : first + width]
        target = moved[first : first + width]
        total[:] = 0.0
        for r in range(n):
            row = updates[r, first : first + width]
            weight = np.float64(coefficients[r])
            for c in range(width):
                total[c] += weight * (np.float64(row[c]) - np.float64(middle[c]))
        for c in range(width):
            target[c] = np.float32(np.float64(middle[c]) + total[c])
        if with_distances:
            for r in range(n):
                _add_squared_differences(updates[r, first : first + width], target, partial[r])
    if with_distances:
        for r in range(n):
            squared[r] += partial[r].sum()
