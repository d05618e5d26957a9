"""Norm clipping (norm bounding) followed by the weighted mean.

Sun, Kairouz, Suresh, McMahan, "Can You Really Backdoor Federated Learning?",
arXiv 1911.07963, 2019.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike

from byzedge.coordinator.aggregation._kernels import combine_rows, squared_distances_to
from byzedge.coordinator.aggregation.base import (
    AggregationDiagnostics,
    AggregationResult,
    StreamingUnavailableError,
    StreamPartial,
    StreamSum,
    UpdateMatrix,
    check_partial,
    ensure_finite,
    row_norms,
    stream_dim_of,
    validate_positive,
    validate_stream_update,
    validate_stream_weight,
    validate_updates,
    validate_weights,
)
from byzedge.coordinator.aggregation.clipping_vr import clip_factors

__all__ = ["NormClipping"]


class NormClipping:
    """Scale every update to norm at most ``M``, then take the weighted mean.

    ``x_i <- x_i / max(1, ||x_i|| / M)``, ``x = sum_i w_i x_i / sum_i w_i``. Each update
    then moves the output by at most ``M w_i / sum_j w_j``, so ``f`` Byzantines of weight
    share ``δ`` shift it by at most ``δ M`` (plus the bias clipping puts on honest updates
    longer than ``M``). It bounds, but does not remove, the attackers' influence; there is
    no breakdown condition, and with ``M`` automatic it holds while the Byzantines are
    fewer than half.

    Streaming (:meth:`start`, :meth:`accumulate`, :meth:`finish`): with a fixed
    ``clip_norm`` each update is clipped as it arrives into one float64 running sum,
    ``O(d)`` memory and the batch result. The automatic radius (the median norm) is known
    only once every update has been seen, and a stateless rule has no previous round to
    borrow it from, so :meth:`start` then raises
    :class:`~coordinator.aggregation.base.StreamingUnavailableError` (aggregate in batch).

    Merge (sharded ingest, :meth:`partial`, :meth:`merge`): with the same fixed ``M`` on
    every share, shares ``A`` and ``B`` merge as ``S = S_A + S_B`` (sums of
    ``w_i c_i x_i``), ``W = W_A + W_B``, and their norms and clip factors concatenate:
    exact, the float64 additions only happen in another order.

    Parameters
    ----------
    clip_norm:
        The radius ``M > 0``; ``None`` (the default) uses ``M = median_i ||x_i||`` of the
        round, which a minority of attackers cannot inflate.

    Notes
    -----
    The diagnostics hold the clip factors ``min(1, M / ||x_i||)`` and, as ``scores``, the
    norms ``||x_i||``.
    """

    name: ClassVar[str] = "norm-clipping"
    stateful: ClassVar[bool] = False
    streaming: ClassVar[bool] = True
    needs_device_ids: ClassVar[bool] = False

    def __init__(self, clip_norm: float | None = None) -> None:
        self.clip_norm = None if clip_norm is None else validate_positive("clip_norm", clip_norm)
        self._stream: StreamSum | None = None
        self._norms: list[float] = []
        self._factors: list[float] = []

    def __call__(
        self, updates: UpdateMatrix, weights: ArrayLike | None = None
    ) -> AggregationResult:
        """Aggregate float32 ``(n, d)`` updates with optional ``(n,)`` weights."""
        matrix = validate_updates(updates, check_finite=False)  # checked by the norms
        vector = validate_weights(weights, len(matrix))
        squared = squared_distances_to(matrix)  # (n,) one blocked pass
        ensure_finite(squared, matrix)  # float64 squares of float32 values cannot overflow
        norms = np.sqrt(squared)  # (n,)
        radius = float(np.median(norms)) if self.clip_norm is None else self.clip_norm
        factors = clip_factors(norms, radius)  # (n,)
        mass = factors if vector is None else factors * vector  # (n,)
        total = float(len(matrix)) if vector is None else float(vector.sum())
        aggregate = combine_rows((mass / total).astype(np.float32), matrix)
        return AggregationResult(
            aggregate, AggregationDiagnostics(scores=norms, clip_factors=factors)
        )

    def start(self, dim: int) -> None:
        """Open a streamed round of ``dim``-dimensional updates.

        Raises
        ------
        StreamingUnavailableError
            When ``clip_norm`` is unset (automatic radius).
        """
        if self.clip_norm is None:
            raise StreamingUnavailableError(
                "norm-clipping: the automatic radius (median norm) is known only after "
                "every update; set clip_norm to stream, or aggregate in batch"
            )
        self._stream = StreamSum(dim)
        self._norms = []
        self._factors = []

    def accumulate(
        self, update: ArrayLike, weight: float = 1.0, device_id: str | None = None
    ) -> None:
        """Clip one float32 ``(d,)`` update and add it with weight ``>= 0`` to the sum."""
        if self._stream is None:
            self.start(stream_dim_of(update))
        stream = self._stream
        assert stream is not None  # noqa: S101 (start() set it or raised)
        assert self.clip_norm is not None  # noqa: S101 (start() checked it)
        vector = validate_stream_update(update, stream.dim)
        w = validate_stream_weight(weight)
        norm = row_norms(vector[None, :])  # (1,)
        factor = float(clip_factors(norm, self.clip_norm)[0])
        stream.add(vector, w, factor)
        self._norms.append(float(norm[0]))
        self._factors.append(factor)

    def partial(self) -> StreamPartial:
        """The open round's sum, weights, norms and factors; the round stays open."""
        if self._stream is None:
            raise ValueError("norm-clipping: no round is open")
        stream = self._stream
        return StreamPartial(
            self.name,
            stream.dim,
            stream.count,
            stream.total,
            self.clip_norm,
            {"sum": stream.sum_vector()},
            {"norms": np.array(self._norms), "factors": np.array(self._factors)},
        )

    def merge(self, partial: StreamPartial) -> None:
        """Add another share, clipped with the same ``clip_norm``, to the open round."""
        if self._stream is None:
            self.start(partial.dim)
        stream = self._stream
        assert stream is not None  # noqa: S101 (start() set it or raised)
        check_partial(
            partial,
            self.name,
            stream.dim,
            vectors=("sum",),
            scalars=("norms", "factors"),
            radius=self.clip_norm,
        )
        stream.merge(partial.vectors["sum"], partial.total, partial.count)
        self._norms.extend(partial.scalars["norms"].tolist())
        self._factors.extend(partial.scalars["factors"].tolist())

    def finish(self) -> AggregationResult:
        """Return the mean of the clipped streamed updates and close the round."""
        if self._stream is None:
            raise ValueError("norm-clipping: no updates were accumulated")
        aggregate = self._stream.mean(self.name)
        diagnostics = AggregationDiagnostics(
            scores=np.array(self._norms), clip_factors=np.array(self._factors)
        )
        self._stream, self._norms, self._factors = None, [], []
        return AggregationResult(aggregate, diagnostics)

    def __repr__(self) -> str:
        return f"NormClipping(clip_norm={self.clip_norm!r})"
