"""Weighted mean (FedAvg): the non-robust baseline.

McMahan, Moore, Ramage, Hampson, Agüera y Arcas, "Communication-Efficient Learning of
Deep Networks from Decentralized Data", AISTATS 2017.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from byzedge.coordinator.aggregation._kernels import all_finite, combine_rows
from byzedge.coordinator.aggregation.base import (
    NON_FINITE_MESSAGE,
    AggregationResult,
    StreamPartial,
    StreamSum,
    UpdateMatrix,
    UpdateVector,
    Weights,
    check_partial,
    ensure_finite,
    stream_dim_of,
    validate_stream_update,
    validate_stream_weight,
    validate_updates,
    validate_weights,
)

__all__ = ["Mean", "weighted_mean"]


def weighted_mean(updates: UpdateMatrix, weights: Weights | None = None) -> UpdateVector:
    """Return ``sum_i w_i x_i / sum_i w_i`` (the plain mean when ``weights`` is ``None``).

    Computed as one float32 matrix-vector product with the coefficients ``w_i / sum_j
    w_j`` (``1 / n`` unweighted), which reads the updates once at memory speed, split
    over the cores (:func:`~byzedge.coordinator.aggregation._kernels.combine_rows`).

    Parameters
    ----------
    updates:
        float32 ``(n, d)``, already validated.
    weights:
        float64 ``(n,)``, non-negative with a positive sum, or ``None``.

    Returns
    -------
    numpy.ndarray
        float32 ``(d,)``.
    """
    return combine_rows(_coefficients(len(updates), weights), updates)  # (d,)


def _coefficients(n: int, weights: Weights | None) -> NDArray[np.float32]:
    """Return the float32 ``(n,)`` coefficients ``w_i / sum_j w_j`` (``1 / n`` unweighted)."""
    if weights is None:
        return np.full(n, 1.0 / n, dtype=np.float32)
    coefficients: NDArray[np.float32] = (weights / weights.sum()).astype(np.float32)
    return coefficients


def _checked_mean(updates: UpdateMatrix, weights: Weights | None) -> UpdateVector:
    """:func:`weighted_mean` of updates not yet checked for NaN/Inf, checking them on the way.

    Every coordinate of the product is ``sum_i a_i x_ij``; a NaN or Inf ``x_ij`` with
    ``a_i != 0`` makes it NaN or Inf (``a_i x_ij`` is, and IEEE sums never turn those
    finite). So a finite result proves every row with a non-zero float32 coefficient
    finite, and only rows whose coefficient is 0 (weight 0, or a weight that underflows
    float32) need a separate look. A non-finite result from finite rows (coefficients
    times values near 3.4e38 rounding past it) is recomputed in float64.
    """
    coefficients = _coefficients(len(updates), weights)  # (n,)
    with np.errstate(over="ignore", invalid="ignore"):
        result = combine_rows(coefficients, updates)  # (d,)
    if not ensure_finite(result, updates):
        exact = np.einsum("k,kd->d", coefficients.astype(np.float64), updates, dtype=np.float64)
        result = exact.astype(np.float32)
    silent = np.flatnonzero(coefficients == 0)
    if len(silent) and not all_finite(updates[silent]):
        raise ValueError(NON_FINITE_MESSAGE)
    return result


class Mean:
    """Weighted mean of the updates (FedAvg).

    ``x = sum_i w_i x_i / sum_i w_i``. Breakdown point 0: a single Byzantine update
    moves the output arbitrarily far, so use it only as a baseline or behind a
    pre-aggregator that bounds each update.

    Streaming (:meth:`start`, :meth:`accumulate`, :meth:`finish`) keeps the running
    float64 sum ``sum_i w_i x_i`` and ``sum_i w_i``: ``O(d)`` memory, the batch result up
    to float rounding.

    Merge (sharded ingest, :meth:`partial`, :meth:`merge`): shares ``A`` and ``B`` of a
    round merge as ``S = S_A + S_B``, ``W = W_A + W_B``, so ``finish`` returns
    ``(S_A + S_B) / (W_A + W_B) = sum_i w_i x_i / sum_i w_i`` over both shares: exact, the
    float64 additions only happen in another order.
    """

    name: ClassVar[str] = "mean"
    stateful: ClassVar[bool] = False
    streaming: ClassVar[bool] = True
    needs_device_ids: ClassVar[bool] = False

    def __init__(self) -> None:
        self._stream: StreamSum | None = None

    def start(self, dim: int) -> None:
        """Open a streamed round of ``dim``-dimensional updates (``ValueError`` if ``dim < 1``)."""
        self._stream = StreamSum(dim)

    def accumulate(
        self, update: ArrayLike, weight: float = 1.0, device_id: str | None = None
    ) -> None:
        """Add one float32 ``(d,)`` update with weight ``>= 0``; ``device_id`` is unused."""
        if self._stream is None:
            self.start(stream_dim_of(update))
        stream = self._stream
        assert stream is not None  # noqa: S101 (start() set it or raised)
        stream.add(validate_stream_update(update, stream.dim), validate_stream_weight(weight))

    def partial(self) -> StreamPartial:
        """The open round's ``S`` and ``W`` (see the class notes); the round stays open."""
        if self._stream is None:
            raise ValueError("mean: no round is open")
        stream = self._stream
        return StreamPartial(
            self.name,
            stream.dim,
            stream.count,
            stream.total,
            None,
            {"sum": stream.sum_vector()},
            {},
        )

    def merge(self, partial: StreamPartial) -> None:
        """Add another share's ``S`` and ``W`` to the open round (``start`` if needed)."""
        if self._stream is None:
            self.start(partial.dim)
        stream = self._stream
        assert stream is not None  # noqa: S101 (start() set it or raised)
        check_partial(partial, self.name, stream.dim, vectors=("sum",))
        stream.merge(partial.vectors["sum"], partial.total, partial.count)

    def finish(self) -> AggregationResult:
        """Return the weighted mean of the streamed updates and close the round."""
        if self._stream is None:
            raise ValueError("mean: no updates were accumulated")
        aggregate = self._stream.mean(self.name)
        self._stream = None
        return AggregationResult(aggregate)

    def __call__(
        self, updates: UpdateMatrix, weights: ArrayLike | None = None
    ) -> AggregationResult:
        """Aggregate float32 ``(n, d)`` updates with optional ``(n,)`` weights."""
        matrix = validate_updates(updates, check_finite=False)  # checked by the product
        return AggregationResult(_checked_mean(matrix, validate_weights(weights, len(matrix))))

    def __repr__(self) -> str:
        return "Mean()"
