"""Norm clipping (norm bounding) followed by the weighted mean.

Sun, Kairouz, Suresh, McMahan, "Can You Really Backdoor Federated Learning?",
arXiv 1911.07963, 2019.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike

from coordinator.aggregation.base import (
    AggregationDiagnostics,
    AggregationResult,
    UpdateMatrix,
    row_norms,
    validate_positive,
    validate_updates,
    validate_weights,
)
from coordinator.aggregation.clipping_vr import clip_factors

__all__ = ["NormClipping"]


class NormClipping:
    """Scale every update to norm at most ``M``, then take the weighted mean.

    ``x_i <- x_i / max(1, ||x_i|| / M)``, ``x = sum_i w_i x_i / sum_i w_i``. Each update
    then moves the output by at most ``M w_i / sum_j w_j``, so ``f`` Byzantines of weight
    share ``δ`` shift it by at most ``δ M`` (plus the bias clipping puts on honest updates
    longer than ``M``). It bounds, but does not remove, the attackers' influence; there is
    no breakdown condition, and with ``M`` automatic it holds while the Byzantines are
    fewer than half.

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

    def __init__(self, clip_norm: float | None = None) -> None:
        self.clip_norm = None if clip_norm is None else validate_positive("clip_norm", clip_norm)

    def __call__(
        self, updates: UpdateMatrix, weights: ArrayLike | None = None
    ) -> AggregationResult:
        """Aggregate float32 ``(n, d)`` updates with optional ``(n,)`` weights."""
        matrix = validate_updates(updates)
        vector = validate_weights(weights, len(matrix))
        norms = row_norms(matrix)  # (n,)
        radius = float(np.median(norms)) if self.clip_norm is None else self.clip_norm
        factors = clip_factors(norms, radius)  # (n,)
        mass = factors if vector is None else factors * vector  # (n,)
        total = float(len(matrix)) if vector is None else float(vector.sum())
        aggregate = np.asarray((mass / total).astype(np.float32) @ matrix, dtype=np.float32)
        return AggregationResult(
            aggregate, AggregationDiagnostics(scores=norms, clip_factors=factors)
        )

    def __repr__(self) -> str:
        return f"NormClipping(clip_norm={self.clip_norm!r})"
