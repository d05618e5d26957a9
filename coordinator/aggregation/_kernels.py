"""Fused passes over a round's float32 ``(n, d)`` matrix, with exact finiteness checks.

Most rules read all ``n * d`` values a few times, and each pass over a 200 MB matrix costs
about as much as the plain mean; a separate ``numpy.isfinite(x).all()`` pass costs more
than the mean itself. The helpers here fold the finiteness test into work a rule does
anyway, or make it as cheap as one float32 sum:

- :func:`all_finite`: whether every entry is finite (exact);
- :func:`squared_distances_to`: ``||x_i - c||^2`` per row, finite exactly when the rows are;
- :func:`clipped_step`: ``c + sum_i a_i (x_i - c)`` and, optionally, the squared distances
  of the rows to that new point, in one pass over cache-sized column blocks.

With numba installed, the last two run as compiled kernels (float64 differences and sums)
on all cores (:mod:`byzedge.coordinator.aggregation._compiled`); the numpy code below is the
fallback and the reference the tests hold them to.

Private to :mod:`byzedge.coordinator.aggregation`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from byzedge.coordinator.aggregation import _compiled
from byzedge.coordinator.aggregation._columns import (
    GRAM_COLUMNS,
    column_blocks,
    single_threaded_blas,
)
from byzedge.coordinator.aggregation._parallel import map_column_ranges

__all__ = ["all_finite", "clipped_step", "combine_rows", "squared_distances_to"]


def all_finite(values: NDArray[np.floating[Any]]) -> bool:
    """Return whether every entry of the float array ``values`` is finite (exact).

    Fast path: one float32 (or native) pairwise sum. The sum is finite only if every term
    is: a NaN term makes every partial sum containing it NaN; an Inf term makes it +-Inf
    or NaN; and IEEE addition never turns +-Inf or NaN back into a finite value. The
    converse fails only when finite terms overflow (a partial sum beyond 3.4e38); then the
    exact elementwise test decides. So a finite sum proves finiteness, and the slow test
    runs only on inputs that are non-finite or enormous.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.add.reduce(values, axis=None)
    if np.isfinite(total):
        return True
    return bool(np.isfinite(values).all())


def combine_rows(
    coefficients: NDArray[np.float32], updates: NDArray[np.float32]
) -> NDArray[np.float32]:
    """Return the float32 ``(d,)`` ``sum_i a_i x_i``: one matrix-vector product per core.

    NaN, Inf and float32 overflow pass through silently into the result, which callers
    check.

    Each core multiplies its own column range with a one-thread BLAS call. Letting
    OpenBLAS thread the product instead is as fast in isolation, but leaves its worker
    threads spinning for a while after the call, and on a 2-core machine they then
    compete with the next rule's own threads (we measured Krum 2.5 times slower right
    after a threaded mean).
    """
    result = np.empty(updates.shape[1], dtype=np.float32)

    def part(start: int, stop: int) -> None:
        # Overflow to Inf is the callers' to detect (they check the result); errstate is
        # thread-local, so each worker sets its own.
        with np.errstate(over="ignore", invalid="ignore"):
            result[start:stop] = coefficients @ updates[:, start:stop]

    with single_threaded_blas():
        map_column_ranges(updates.shape[1], part)
    return result


def _block_squared_norms(difference: NDArray[np.float32]) -> NDArray[np.float64]:
    """Squared norm of each row of a float32 ``(n, width)`` block (float32 SIMD dot)."""
    squared: NDArray[np.float64] = np.einsum("ij,ij->i", difference, difference).astype(np.float64)
    return squared


def _squared_norms_exact(difference: NDArray[np.float32]) -> NDArray[np.float64]:
    return np.einsum("ij,ij->i", difference, difference, dtype=np.float64)  # type: ignore[no-any-return]


def squared_distances_to(
    updates: NDArray[np.float32], centre: NDArray[np.float32] | None = None
) -> NDArray[np.float64]:
    """Return float64 ``(n,)`` ``||x_i - c||^2`` of float32 differences, one pass.

    Each cache-sized column block's squares are summed in float32 (SIMD lanes, a few
    thousand terms: relative error ~1e-7) and the blocks in float64. Where a float32
    block sum is not finite (a NaN or Inf entry, or differences beyond ~1.8e19 whose
    squares overflow float32) that block is summed again in float64, which cannot
    overflow: a float32 difference of finite values is at most 6.8e38, its square at most
    4.7e77, and any realistic ``d`` of them stay below float64's 1.8e308. So the result is
    finite exactly when every entry of ``updates`` (and of the finite ``centre``) is.
    ``centre=None`` stands for the origin (the rows' squared norms).
    """
    n, d = updates.shape
    if _compiled.AVAILABLE:
        origin = np.zeros(d, dtype=np.float32) if centre is None else centre

        def distances_in(start: int, stop: int) -> NDArray[np.float64]:
            partial = np.zeros(n)
            _compiled.squared_distances_columns(updates, origin, start, stop, partial)
            return partial

        return np.sum(map_column_ranges(d, distances_in), axis=0)  # type: ignore[no-any-return]
    squared = np.zeros(n)
    with np.errstate(over="ignore", invalid="ignore"):
        for columns in column_blocks(d, GRAM_COLUMNS):
            difference = (
                updates[:, columns] if centre is None else updates[:, columns] - centre[columns]
            )  # (n, width), in cache
            block = _block_squared_norms(difference)
            if not np.isfinite(block).all():
                block = _squared_norms_exact(difference)
            squared += block
    return squared


def clipped_step(
    updates: NDArray[np.float32],
    centre: NDArray[np.float32],
    coefficients: NDArray[np.floating[Any]],
    with_distances: bool = False,
) -> tuple[NDArray[np.float32], NDArray[np.float64] | None]:
    """Return ``v = c + sum_i a_i (x_i - c)`` (float32 ``(d,)``) and ``||x_i - v||^2`` or None.

    ``coefficients`` are the ``a_i`` (clip factor times weight over the total), float32
    or float64; the compiled kernel accumulates in float64 either way.
    Without distances, one matrix-vector product (:func:`combine_rows`). With them, one
    pass over column blocks: each block of ``v`` is made from the block's differences,
    then the rows' squared distances to it are accumulated, as in
    :func:`squared_distances_to`, while the block is in cache.
    """
    n, d = updates.shape
    if not with_distances:
        # v = (1 - sum_i a_i) c + sum_i a_i x_i: one BLAS matrix-vector product per core,
        # as fast as the mean and rounded as the mean is (float32 sums, errors relative
        # to the largest |a_i x_ij|); forming every x_i - c first only costs time.
        weights = np.asarray(coefficients, dtype=np.float32)
        rest = np.float32(1.0 - float(np.sum(coefficients, dtype=np.float64)))
        with np.errstate(over="ignore", invalid="ignore"):
            return combine_rows(weights, updates) + rest * centre, None
    moved = np.empty(d, dtype=np.float32)
    if _compiled.AVAILABLE:

        def step_in(start: int, stop: int) -> NDArray[np.float64]:
            partial = np.zeros(n)
            _compiled.clipped_step_columns(
                updates, centre, coefficients, start, stop, moved, partial, with_distances
            )
            return partial

        parts = map_column_ranges(d, step_in)
        return moved, (np.sum(parts, axis=0) if with_distances else None)
    squared = np.zeros(n) if with_distances else None
    with single_threaded_blas(), np.errstate(over="ignore", invalid="ignore"):
        for columns in column_blocks(d, GRAM_COLUMNS):
            block = updates[:, columns]  # (n, width) view
            moved[columns] = centre[columns] + coefficients @ (block - centre[columns])
            if squared is not None:
                difference = block - moved[columns]
                part = _block_squared_norms(difference)
                if not np.isfinite(part).all():
                    part = _squared_norms_exact(difference)
                squared += part
    return moved, squared
