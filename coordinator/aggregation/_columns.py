"""Column-block kernels shared by the per-coordinate and the distance-based rules.

A round's updates are a float32 ``(n, d)`` matrix with small ``n`` (tens) and large ``d``
(millions). Sorting or selecting along axis 0 of that matrix walks memory with a stride
of ``4 d`` bytes, one cache line per value; a ``(d, n)`` float64 copy for a Gram matrix
costs ``8 n d`` bytes. The kernels here instead take a few thousand columns at a time:
a block is transposed into a contiguous ``(width, n)`` array that stays in cache, sorted
row by row with numpy's vectorised sort, or cast to float64 and multiplied by its own
transpose. Memory beyond the input is then ``O(n * width + d)``, whatever ``d`` is.
The Gram kernels split the columns into one range per core
(:mod:`byzedge.coordinator.aggregation._parallel`), each range with its own single-threaded BLAS
calls and partial sums.

Private to :mod:`byzedge.coordinator.aggregation`; the rules keep their public functions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
from numpy.typing import NDArray

from byzedge.coordinator.aggregation._parallel import map_column_ranges

try:  # installed with the coordinator extra (scikit-learn needs it too)
    from threadpoolctl import ThreadpoolController
except ImportError:  # pragma: no cover - exercised only without the coordinator extra
    ThreadpoolController = None

__all__ = [
    "GRAM_COLUMNS",
    "SORT_COLUMNS",
    "centred_gram",
    "centred_gram32",
    "centred_gram32_full",
    "column_blocks",
    "median_of_sorted",
    "single_threaded_blas",
    "sorted_rows",
    "transposed",
]

SORT_COLUMNS = 8192
"""Columns per block for the sorting kernels: ``8192 x n`` float32 stay in L2 for n ~ 50."""

GRAM_COLUMNS = 4096
"""Columns per block for the float64 Gram kernel (``4096 x n`` float64, ~1.6 MB at n=50)."""


_controller: list[Any] = []  # the ThreadpoolController, made on first use (it scans libraries)


def single_threaded_blas() -> AbstractContextManager[Any]:
    """Return a context in which BLAS runs on one thread (a no-op without threadpoolctl).

    The per-block products are small (``n x width`` by ``width x n``): threading them
    gains little on an idle machine, and on a busy one (the coordinator shares its cores
    with the broker and the ingest) OpenBLAS's spinning threads made a Gram pass 5 to 40
    times slower in our measurements. One thread keeps the time steady.
    """
    if ThreadpoolController is None:
        return nullcontext()
    if not _controller:
        _controller.append(ThreadpoolController())
    limiter: AbstractContextManager[Any] = _controller[0].limit(limits=1, user_api="blas")
    return limiter


def column_blocks(d: int, width: int, start: int = 0) -> Iterator[slice]:
    """Yield consecutive column slices of at most ``width`` columns covering ``range(start, d)``."""
    for first in range(start, d, width):
        yield slice(first, min(first + width, d))


def transposed(updates: NDArray[np.float32], columns: slice) -> NDArray[np.float32]:
    """Return columns ``columns`` of ``updates`` as a contiguous ``(width, n)`` copy."""
    return np.ascontiguousarray(updates[:, columns].T)


def sorted_rows(block: NDArray[np.float32]) -> NDArray[np.float32]:
    """Return a copy of the ``(width, n)`` ``block`` with every row sorted increasingly."""
    result = block.copy()
    result.sort(axis=1)
    return result


def median_of_sorted(ordered: NDArray[np.float32]) -> NDArray[np.float32]:
    """Return the median of each row of the row-sorted ``(width, n)`` float32 ``ordered``.

    Computed exactly as :func:`numpy.median` does for float32: the middle value for odd
    ``n``, else the float32 sum of the two middle values divided by 2 (bit-for-bit equal).
    """
    n = ordered.shape[1]
    half = n // 2
    if n % 2:
        return ordered[:, half].copy()
    return np.asarray((ordered[:, half - 1] + ordered[:, half]) / np.float32(2), np.float32)


_GramParts = tuple[NDArray[np.float64], NDArray[np.float64], float]


def _summed(parts: list[_GramParts]) -> _GramParts:
    """Add up the per-range ``(gram, projections, mean_squared)`` of the Gram kernels."""
    return (
        np.sum([gram for gram, _, _ in parts], axis=0),
        np.sum([projections for _, projections, _ in parts], axis=0),
        sum(mean_squared for _, _, mean_squared in parts),
    )


def centred_gram(
    updates: NDArray[np.float32], *, width: int = GRAM_COLUMNS
) -> tuple[NDArray[np.float64], NDArray[np.float64], float]:
    """Return the float64 Gram matrix of the updates centred on their mean, in one pass.

    With ``m`` the (float64) mean update and ``y_i = x_i - m``, returns ``G`` with
    ``G_ij = <y_i, y_j>`` (``(n, n)``), ``p`` with ``p_i = <y_i, m>`` (``(n,)``) and
    ``||m||^2``. The mean of a column block is the block of the mean, so each block is
    centred on its own column means: one pass over the updates, float64 throughout, and
    ``||x_i - x_j||^2 = G_ii + G_jj - 2 G_ij`` does not cancel catastrophically for close,
    large updates.
    """
    n, d = updates.shape

    def part(start: int, stop: int) -> tuple[NDArray[np.float64], NDArray[np.float64], float]:
        gram = np.zeros((n, n))
        projections = np.zeros(n)
        mean_squared = 0.0
        buffer = np.empty((n, width))  # reused: a fresh copy per block costs page faults
        # NaN/Inf entries only make the result non-finite; callers check it (ensure_finite).
        # errstate is thread-local, so each worker sets its own.
        with np.errstate(over="ignore", invalid="ignore"):
            for columns in column_blocks(stop, width, start):
                view = updates[:, columns]  # (n, w) float32 view
                block = buffer[:, : view.shape[1]]
                np.copyto(block, view)  # (n, w) float64
                mean = block.mean(axis=0)  # (w,)
                block -= mean
                gram += block @ block.T  # syrk
                projections += block @ mean
                mean_squared += float(mean @ mean)
        return gram, projections, mean_squared

    with single_threaded_blas():
        return _summed(map_column_ranges(d, part))


GRAM32_RTOL = 2.0**-22
"""Error allowance of a distance from :func:`centred_gram32`, relative to ``(||y_i|| + ||y_j||)^2``.

``D_ij = G_ii + G_jj - 2 G_ij``, and each Gram entry's error is at most about
``u sqrt(width) ||y_i|| ||y_j||`` per block (``u = 2^-24``, ``width = 4096``), random in
sign, the blocks' errors adding in float64 like a random walk. Measured on the benchmark
round (n = 50, d = 1e6): at most ``9.3e-9 (||y_i|| + ||y_j||)^2``, standard deviation
``1.8e-9``. The allowance ``2.4e-7`` is 26 times the largest error seen; a Krum score's
allowance, the sum of its ``k`` distances' allowances, was 5 times its largest error.
"""


def centred_gram32(
    updates: NDArray[np.float32], *, width: int = GRAM_COLUMNS
) -> NDArray[np.float64]:
    """Return the Gram matrix of the centred updates from float32 products (float64 out).

    Like :func:`centred_gram` (each block centred on its own column means, so close, large
    updates do not cancel) but each block's product is a float32 ``sgemm``, twice the
    speed of float64 and without the float64 copy; blocks add up in float64. Entries are
    accurate to well within :data:`GRAM32_RTOL` ``* (||y_i|| + ||y_j||)^2``: enough to rank Krum
    scores that are not nearly tied; callers recompute near-ties with
    :func:`centred_gram`. A NaN or Inf entry makes the result non-finite.
    """
    return centred_gram32_full(updates, width=width, with_projections=False)[0]


def centred_gram32_full(
    updates: NDArray[np.float32], *, width: int = GRAM_COLUMNS, with_projections: bool = True
) -> tuple[NDArray[np.float64], NDArray[np.float64], float]:
    """:func:`centred_gram`'s three results from float32 products, as :func:`centred_gram32`.

    ``p_i = <y_i, m>`` and ``||m||^2`` come from float32 products on the same blocks,
    with errors of the same relative order as the Gram entries' (zeros when
    ``with_projections`` is false, for callers that need distances only).
    """
    n, d = updates.shape

    def part(start: int, stop: int) -> tuple[NDArray[np.float64], NDArray[np.float64], float]:
        gram = np.zeros((n, n))
        projections = np.zeros(n)
        mean_squared = 0.0
        # One centred block, reused: a fresh (n, width) temporary per block costs page
        # faults on every allocation.
        buffer = np.empty((n, width), dtype=np.float32)
        # errstate is thread-local, so each worker sets its own.
        with np.errstate(over="ignore", invalid="ignore"):
            for columns in column_blocks(stop, width, start):
                view = updates[:, columns]  # (n, w) view
                mean = view.mean(axis=0, dtype=np.float32)  # (w,)
                block = buffer[:, : view.shape[1]]
                np.subtract(view, mean, out=block)  # (n, w) float32, centred
                gram += block @ block.T  # float32 syrk, accumulated in float64
                if with_projections:
                    projections += block @ mean
                    mean_squared += float(mean @ mean)
        return gram, projections, mean_squared

    with single_threaded_blas():
        return _summed(map_column_ranges(d, part))
