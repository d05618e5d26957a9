"""Adaptive robust clipping (ARC): clip the largest updates, then aggregate.

Allouah, Guerraoui, Gupta, Jellouli, Rizk, Stephan, "The Vital Role of Gradient Clipping
in Byzantine-Resilient Distributed Learning", arXiv 2405.14432, 2024.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from byzedge.coordinator.aggregation._kernels import squared_distances_to
from byzedge.coordinator.aggregation.base import (
    AggregationDiagnostics,
    AggregationResult,
    UpdateMatrix,
    ensure_finite,
    num_byzantine,
    validate_fraction,
    validate_updates,
    validate_weights,
)
from byzedge.coordinator.aggregation.clipping_vr import clip_factors
from byzedge.coordinator.aggregation.composition import DEFAULT_INNER, InnerRule

__all__ = ["AdaptiveRobustClipping", "arc_clip_count", "arc_factors"]


def arc_clip_count(n: int, f: int) -> int:
    """Return ``k = floor(2 (f / n) (n - f))``, the number of updates ARC clips."""
    return (2 * f * (n - f)) // n


def arc_factors(norms: NDArray[np.float64], k: int) -> tuple[NDArray[np.float64], float | None]:
    """Return the ARC scale factors for ``norms`` and the radius, ``None`` when ``k = 0``.

    The radius is the ``(k + 1)``-th largest norm; the ``k`` largest are scaled down to it
    (ties at the radius are unaffected either way), the others keep factor 1.
    """
    if k == 0:
        return np.ones_like(norms), None
    radius = float(-np.partition(-norms, k)[k])  # the (k+1)-th largest norm
    return clip_factors(norms, radius), radius


class AdaptiveRobustClipping:
    """Adaptive robust clipping (ARC) followed by any robust rule.

    With ``f = floor(max_byzantine_fraction * n)`` and ``k = floor(2 (f / n) (n - f))``,
    the ``k`` updates of largest norm are scaled to the norm of the ``(k + 1)``-th largest,
    ``x_i <- min(1, τ / ||x_i||) x_i``, and the ``n`` clipped updates go to the inner rule
    (Allouah et al., 2024, Alg. 1). Since ``k >= f``, every Byzantine update of
    outstanding norm is clipped to a norm some honest update has; the radius adapts to
    the round, so ARC needs no clip constant. It preserves the inner rule's robustness
    (the paper proves ARC∘F is (f, κ')-robust when F is (f, κ)-robust) and its
    breakdown condition is the inner rule's, which runs on the same ``n`` and ``f``.
    Cost ``O(n d + n log n)`` plus the inner rule.

    Weights do not enter the clipping (``k`` counts updates); they are passed to the
    inner rule.

    Parameters
    ----------
    inner:
        Registry name of the stateless rule applied to the clipped updates
        (default ``"coordinate-median"``).
    inner_params:
        Hyperparameters of the inner rule.
    max_byzantine_fraction:
        Upper bound on the Byzantine fraction, in ``[0, 0.5)``.

    Notes
    -----
    ``clip_factors`` holds ARC's scale factors; ``selected`` and ``scores`` are the inner
    rule's (row ``i`` is update ``i``), or the norms ``||x_i||`` as scores when the inner
    rule has none. :attr:`last_radius` is the latest radius.
    """

    name: ClassVar[str] = "arc"
    stateful: ClassVar[bool] = False
    streaming: ClassVar[bool] = False
    needs_device_ids: ClassVar[bool] = False

    def __init__(
        self,
        inner: str = DEFAULT_INNER,
        inner_params: Mapping[str, Any] | None = None,
        max_byzantine_fraction: float = 0.2,
    ) -> None:
        self.max_byzantine_fraction = validate_fraction(
            "max_byzantine_fraction", max_byzantine_fraction
        )
        self.inner = InnerRule(self.name, inner, inner_params, self.max_byzantine_fraction)
        self._last_radius: float | None = None

    @property
    def last_radius(self) -> float | None:
        """The clip radius of the latest call; ``None`` before it or when nothing was clipped."""
        return self._last_radius

    def __call__(
        self, updates: UpdateMatrix, weights: ArrayLike | None = None
    ) -> AggregationResult:
        """Aggregate float32 ``(n, d)`` updates with optional ``(n,)`` weights."""
        matrix = validate_updates(updates, check_finite=False)  # checked by the norms
        vector = validate_weights(weights, len(matrix))
        n = len(matrix)
        f = num_byzantine(n, self.max_byzantine_fraction)
        squared = squared_distances_to(matrix)  # (n,) one blocked pass
        ensure_finite(squared, matrix)  # float64 squares of float32 values cannot overflow
        norms = np.sqrt(squared)  # (n,)
        factors, radius = arc_factors(norms, arc_clip_count(n, f))
        self._last_radius = radius
        clipped = matrix if radius is None else matrix * factors.astype(np.float32)[:, None]
        result = self.inner.rule(self.max_byzantine_fraction)(clipped, vector)
        inner = result.diagnostics
        diagnostics = AggregationDiagnostics(
            selected=inner.selected,
            scores=norms if inner.scores is None else inner.scores,
            clip_factors=factors,
        )
        return AggregationResult(result.aggregate, diagnostics)

    def __repr__(self) -> str:
        return (
            f"AdaptiveRobustClipping(inner={self.inner.describe()}, "
            f"max_byzantine_fraction={self.max_byzantine_fraction!r})"
        )
