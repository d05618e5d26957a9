"""Column-block kernels shared by the per-coordinate and the distance-based rules.

A round's updates are a float32 ``(n, d)`` matrix with small ``n`` (tens) and large ``d``
(millions). Sorting or selecting along axis 0 of that matrix walks memory with a stride
of ``4 d`` bytes, one cache line per value; a ``(d, n)`` float64 copy for a Gram matrix
costs ``8 n d`` bytes. The kernels here instead take a few thousand columns at a time:
a block is transposed into a contiguous ``(width, n)`` array that stays in cache, sorted
row by row with numpy's vectorised sort, or cast to float64 and multiplied by its own
transpose. Memory beyond the input is then ``O(n * width + d)``, whatever ``d`` is.

Private to :mod:`coordinator.aggregation`; the rules keep their public functions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
from numpy.typing import NDArray

try:  # installed with the coordinator extra (scikit-learn needs it too)
    from threadpoolctl import ThreadpoolController
except ImportError:  # pragma: no cover - exercised only without the coordinator extra
    ThreadpoolController = None

__all__ = [
    "GRAM_COLUMNS",
    "SORT_COLUMNS",
    "centred_gram",
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


def column_blocks(d: int, width: int) -> Iterator[slice]:
    """Yield consecutive column slices of at most ``width`` columns covering ``range(d)``."""
    for start in range(0, d, width):
        yield slice(start, min(start + width, d))


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
    gram = np.zeros((n, n))
    projections = np.zeros(n)
    mean_squared = 0.0
    with single_threaded_blas():
        for columns in column_blocks(d, width):
            block = updates[:, columns].astype(np.float64)  # (n, width)
            mean = block.mean(axis=0)  # (width,)
            block -= mean
            gram += block @ block.T  # syrk
            projections += block @ mean
            mean_squared += float(mean @ mean)
    return gram, projections, mean_squared
