"""Geometric median by smoothed Weiszfeld iterations (RFA).

Pillutla, Kakade, Harchaoui, "Robust Aggregation for Federated Learning", IEEE Transactions
on Signal Processing 70, 2022 (arXiv 1912.13445).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from byzedge.coordinator.aggregation._columns import (
    GRAM32_RTOL,
    GRAM_COLUMNS,
    centred_gram,
    centred_gram32_full,
    column_blocks,
    single_threaded_blas,
)
from byzedge.coordinator.aggregation._kernels import combine_rows
from byzedge.coordinator.aggregation._parallel import map_column_ranges
from byzedge.coordinator.aggregation.base import (
    AggregationDiagnostics,
    AggregationResult,
    UpdateMatrix,
    UpdateVector,
    Weights,
    ensure_finite,
    validate_positive,
    validate_positive_int,
    validate_updates,
    validate_weights,
)

__all__ = ["GeometricMedian", "smoothed_weiszfeld"]


_GRAM_RTOL = 1e-12
"""Relative error allowed for the float64 Gram matrix entries (sums over ``d`` products)."""

_DISTANCE_RTOL = 1e-9
"""Largest error, relative to ``max(nu, distance)^2``, the float64 Gram path accepts."""

_DISTANCE_RTOL32 = 1e-5
"""Largest error, relative to ``max(nu, distance)^2``, the float32 Gram path accepts.

A squared distance off by a relative ``eta`` changes its Weiszfeld weight by at most
``eta / 2`` relative; at ``1e-5`` the iterate moves by a few millionths of the spread of
the updates, the order of the stopping tolerance. The bound is a worst case: on the
benchmark round the actual errors were 300 times smaller.
"""

FAST_GRAM_MIN_ENTRIES = 1 << 20
"""From this many entries ``n * d`` on, the iterations first try a float32 Gram matrix."""


@dataclass(frozen=True, slots=True)
class _GramRound:
    """A round's centred Gram matrix with the error model of the products that made it.

    ``||z - x_i||^2``, ``||z' - z||^2`` and ``||z||^2`` are quadratic forms in ``gram``,
    ``projections`` and ``mean_squared``; each entry's rounding error is at most ``rtol``
    times the matching entry of ``magnitude`` / ``projection_magnitude`` /
    ``mean_squared``.
    """

    gram: NDArray[np.float64]  # (n, n) <y_i, y_j>, y_i = x_i - m
    projections: NDArray[np.float64]  # (n,) <y_i, m>
    mean_squared: float  # ||m||^2
    magnitude: NDArray[np.float64]  # (n, n)
    projection_magnitude: NDArray[np.float64]  # (n,)
    rtol: float
    distance_rtol: float

    @classmethod
    def exact(cls, updates: UpdateMatrix) -> _GramRound:
        """Float64 products: entries err by ``1e-12`` of their own size at most."""
        gram, projections, mean_squared = centred_gram(updates)
        ensure_finite(gram, updates)  # ValueError on NaN/Inf; float64 sums cannot overflow
        return cls(
            gram,
            projections,
            mean_squared,
            np.abs(gram),
            np.abs(projections),
            _GRAM_RTOL,
            _DISTANCE_RTOL,
        )

    @classmethod
    def fast(cls, updates: UpdateMatrix) -> _GramRound | None:
        """Float32 products, or ``None`` when they overflowed (the float64 path decides).

        A product entry errs by at most about ``GRAM32_RTOL (||y_i|| + ||y_j||)^2``
        (:data:`~coordinator.aggregation._columns.GRAM32_RTOL`); the model here is the
        product form ``4 GRAM32_RTOL ||y_i|| ||y_j||``, equal to it for equal norms and
        tighter, as rounding errors are, when one update is much larger than the other.
        """
        gram, projections, mean_squared = centred_gram32_full(updates)
        if not ensure_finite(gram, updates):
            return None
        root = np.sqrt(np.maximum(np.diag(gram), 0.0))  # (n,) ||y_i||
        mean_norm = float(np.sqrt(max(mean_squared, 0.0)))
        return cls(
            gram,
            projections,
            mean_squared,
            np.outer(root, root),
            root * mean_norm,
            4 * GRAM32_RTOL,
            _DISTANCE_RTOL32,
        )


def smoothed_weiszfeld(
    updates: UpdateMatrix,
    weights: Weights | None,
    nu: float,
    max_iter: int,
    tol: float,
) -> tuple[UpdateVector, NDArray[np.float64], int]:
    """Approximate ``argmin_z sum_i w_i max(nu, ||z - x_i||)`` from the weighted mean.

    Each iteration sets ``b_i = w_i / max(nu, ||z - x_i||)`` and ``z = sum_i b_i x_i /
    sum_i b_i``; it stops after ``max_iter`` iterations or once ``z`` moves by at most
    ``tol * max(1, ||z||)``.

    Every iterate is a convex combination ``z = sum_i c_i x_i``, so the iterations run on
    the coefficients ``c`` (``n`` numbers) with the centred Gram matrix ``G`` computed in
    one pass: ``||z - x_i||^2 = G_ii - 2 (G c)_i + c'Gc`` and
    ``||z' - z||^2 = (c' - c)'G(c' - c)``; ``z`` itself is formed once at the end. Each
    of these is checked against a bound on its rounding error. Large rounds first use a
    Gram matrix of float32 products (half the cost) and accept a distance error up to
    ``1e-5`` relative; where that could be exceeded, or the stopping test is too close to
    call, the float64 Gram matrix is used, accepting ``1e-9``; and where even that is not
    enough (updates whose spread is tiny next to their distance from the mean, e.g.
    Byzantine updates many orders of magnitude larger than the honest ones), the
    iterations rerun directly on the ``d``-dimensional vectors, in float64, as the
    definition reads.

    Returns
    -------
    aggregate:
        float32 ``(d,)``.
    distances:
        float64 ``(n,)``: ``||z - x_i||`` at the returned ``z``.
    iterations:
        The number of iterations run.
    """
    alpha = np.ones(len(updates)) if weights is None else weights / weights.sum()  # (n,)
    solved = None
    if updates.size >= FAST_GRAM_MIN_ENTRIES:
        fast = _GramRound.fast(updates)
        if fast is not None:
            solved = _weiszfeld_gram(fast, alpha, nu, max_iter, tol)
    if solved is None:
        solved = _weiszfeld_gram(_GramRound.exact(updates), alpha, nu, max_iter, tol)
    if solved is None:
        return _weiszfeld_direct(updates, alpha, nu, max_iter, tol)
    coefficients, distances, iterations = solved
    return _combine32(updates, coefficients), distances, iterations


def _weiszfeld_gram(
    round_: _GramRound, alpha: NDArray[np.float64], nu: float, max_iter: int, tol: float
) -> tuple[NDArray[np.float64], NDArray[np.float64], int] | None:
    """Run the iterations on the coefficients; ``None`` when rounding could matter."""
    gram, projections, mean_squared = round_.gram, round_.projections, round_.mean_squared
    magnitude, rtol = round_.magnitude, round_.rtol
    diagonal = np.diag(gram).copy()  # (n,)
    floor = nu * nu

    def squared_distances(c: NDArray[np.float64]) -> NDArray[np.float64] | None:
        gc = gram @ c  # (n,)
        squared = np.maximum(diagonal - 2 * gc + c @ gc, 0.0)  # (n,)
        size = np.abs(c)
        error = rtol * (np.diag(magnitude) + 2 * magnitude @ size + size @ magnitude @ size)
        if (error > round_.distance_rtol * np.maximum(squared, floor)).any():
            return None
        return squared

    c = alpha / alpha.sum()  # (n,)
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 (the count is returned)
        squared = squared_distances(c)
        if squared is None:
            return None
        beta = alpha / np.maximum(nu, np.sqrt(squared))  # (n,)
        c_next = beta / beta.sum()  # (n,)
        delta = c_next - c  # (n,)
        step_squared = float(delta @ gram @ delta)
        step_error = rtol * float(np.abs(delta) @ magnitude @ np.abs(delta))
        c = c_next
        size = np.abs(c)
        norm_squared = mean_squared + 2 * float(c @ projections) + float(c @ gram @ c)
        norm_error = rtol * (
            mean_squared
            + 2 * float(size @ round_.projection_magnitude)
            + float(size @ magnitude @ size)
        )
        bound_squared = tol * tol * max(1.0, norm_squared)
        margin = step_error + tol * tol * (norm_error if norm_squared > 1.0 else 0.0)
        if abs(step_squared - bound_squared) <= margin:
            return None  # too close to call: let the more exact path decide
        if step_squared <= bound_squared:
            break
    squared = squared_distances(c)
    if squared is None:
        return None
    return c, np.sqrt(squared), iterations


def _combine(updates: UpdateMatrix, coefficients: NDArray[np.float64]) -> NDArray[np.float64]:
    """Return ``sum_i coefficients_i x_i`` in float64, one column block at a time."""
    d = updates.shape[1]
    result = np.empty(d)

    def part(start: int, stop: int) -> None:
        for columns in column_blocks(stop, GRAM_COLUMNS, start):
            result[columns] = coefficients @ updates[:, columns].astype(np.float64)

    with single_threaded_blas():
        map_column_ranges(d, part)
    return result


def _combine32(updates: UpdateMatrix, coefficients: NDArray[np.float64]) -> UpdateVector:
    """Return ``sum_i coefficients_i x_i`` as float32, one matrix-vector product per core."""
    return combine_rows(coefficients.astype(np.float32), updates)


def _distances_to(updates: UpdateMatrix, point: NDArray[np.float64]) -> NDArray[np.float64]:
    """Return ``||x_i - point||`` (float64 ``(n,)``), one column block at a time."""
    squared = np.zeros(len(updates))
    for columns in column_blocks(updates.shape[1], GRAM_COLUMNS):
        difference = updates[:, columns].astype(np.float64) - point[columns]  # (n, width)
        squared += np.einsum("ij,ij->i", difference, difference)
    return np.sqrt(squared)


def _weiszfeld_direct(
    updates: UpdateMatrix, alpha: NDArray[np.float64], nu: float, max_iter: int, tol: float
) -> tuple[UpdateVector, NDArray[np.float64], int]:
    """The iterations on the ``d``-dimensional vectors, in float64 (the definition)."""
    z = _combine(updates, alpha) / alpha.sum()  # (d,)
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 (the count is returned)
        distances = _distances_to(updates, z)  # (n,)
        beta = alpha / np.maximum(nu, distances)  # (n,)
        z_next = _combine(updates, beta) / beta.sum()  # (d,)
        step = float(np.linalg.norm(z_next - z))
        z = z_next
        if step <= tol * max(1.0, float(np.linalg.norm(z))):
            break
    return z.astype(np.float32), _distances_to(updates, z), iterations


class GeometricMedian:
    """Geometric median (RFA) by smoothed Weiszfeld iterations.

    ``z* = argmin_z sum_i w_i ||z - x_i||``, approximated from the weighted mean by
    ``b_i = w_i / max(nu, ||z - x_i||)``, ``z <- sum_i b_i x_i / sum_i b_i``. Breakdown point
    1/2: the output stays bounded while the Byzantines hold less than half the weight.
    Not (δ,c)-robust alone under heterogeneity (combine with bucketing). ``nu`` is an
    absolute distance: updates much smaller than ``nu`` make the result the weighted mean.

    Parameters
    ----------
    nu:
        Smoothing ``nu > 0`` (0.1 in RFA and ByzFL).
    max_iter:
        Iteration cap ``>= 1`` (the papers' code runs 3 to 8; we default higher, with
        early stopping).
    tol:
        Relative step below which the iterations stop, ``> 0``.

    Notes
    -----
    The diagnostics' ``scores`` hold the distances ``||z - x_i||``.
    """

    name: ClassVar[str] = "geometric-median"
    stateful: ClassVar[bool] = False
    streaming: ClassVar[bool] = False
    needs_device_ids: ClassVar[bool] = False

    def __init__(self, nu: float = 0.1, max_iter: int = 100, tol: float = 1e-6) -> None:
        self.nu = validate_positive("nu", nu)
        self.max_iter = validate_positive_int("max_iter", max_iter)
        self.tol = validate_positive("tol", tol)

    def __call__(
        self, updates: UpdateMatrix, weights: ArrayLike | None = None
    ) -> AggregationResult:
        """Aggregate float32 ``(n, d)`` updates with optional ``(n,)`` weights."""
        matrix = validate_updates(updates, check_finite=False)  # checked by the Gram matrix
        vector = validate_weights(weights, len(matrix))
        aggregate, distances, _ = smoothed_weiszfeld(
            matrix, vector, self.nu, self.max_iter, self.tol
        )
        return AggregationResult(aggregate, AggregationDiagnostics(scores=distances))

    def __repr__(self) -> str:
        return f"GeometricMedian(nu={self.nu!r}, max_iter={self.max_iter!r}, tol={self.tol!r})"
