"""Centered clipping (CC) with the centre kept across rounds.

Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust Optimization",
ICML 2021 (arXiv 2012.10333).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from byzedge.coordinator.aggregation._kernels import clipped_step, squared_distances_to
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
    vector_from_state,
    vector_to_state,
)
from byzedge.coordinator.aggregation.clipping_vr import clip_factors

__all__ = ["CenteredClipping"]


class CenteredClipping:
    """Centered clipping: ``L`` clipped steps from the previous round's output.

    With centre ``v`` (the previous output; zeros before the first round), repeat ``L``
    times::

        v <- v + sum_i w_i clip_τ(x_i - v) / sum_i w_i,   clip_τ(z) = min(1, τ/||z||) z

    and keep ``v`` as the output and the next round's centre. With ``δ`` the Byzantine
    (weight) share, each step moves ``v`` by at most ``δ τ`` because of them, so the rule
    is (δ,c)-robust for ``δ < 0.1`` with a suitable ``τ`` (Karimireddy et al., Thm. 3),
    which needs worker momentum to keep honest updates close to the centre. With ``L = 1``
    and the automatic radius it coincides with ``clipping-vr``.

    Parameters
    ----------
    clip_threshold:
        The radius ``τ > 0``, or ``None`` (the default, as ``clip_threshold`` is "auto
        when unset" fleet-wide) for ``τ = median_i ||x_i - v||`` at each step. The papers
        fix ``τ`` (10 in the bucketing paper's code, 100 in ByzFL), which presumes a known
        update scale.
    iterations:
        ``L >= 1`` (3 in the bucketing paper's code, 1 in the CC paper's runs).

    Notes
    -----
    The diagnostics hold the clip factors and distances ``||x_i - v||`` (as ``scores``) of
    the last step. The centre and round count round-trip through :meth:`state_dict`.
    """

    name: ClassVar[str] = "centered-clipping"
    stateful: ClassVar[bool] = True
    streaming: ClassVar[bool] = False
    needs_device_ids: ClassVar[bool] = False

    def __init__(self, clip_threshold: float | None = None, iterations: int = 3) -> None:
        self.clip_threshold = (
            None if clip_threshold is None else validate_positive("clip_threshold", clip_threshold)
        )
        self.iterations = validate_positive_int("iterations", iterations)
        self._centre: UpdateVector | None = None
        self._rounds = 0

    @property
    def centre(self) -> UpdateVector | None:
        """A copy of the current centre (float32 ``(d,)``), or ``None`` before round one."""
        return None if self._centre is None else self._centre.copy()

    @property
    def rounds(self) -> int:
        """How many rounds this instance (or the state it loaded) has aggregated."""
        return self._rounds

    def __call__(
        self, updates: UpdateMatrix, weights: ArrayLike | None = None
    ) -> AggregationResult:
        """Aggregate float32 ``(n, d)`` updates with optional ``(n,)`` weights.

        Raises
        ------
        ValueError
            On malformed input, or when ``d`` differs from the centre's dimension.
        """
        matrix = validate_updates(updates, check_finite=False)  # checked by the distances
        vector = validate_weights(weights, len(matrix))
        n, d = matrix.shape
        centre = np.zeros(d, dtype=np.float32) if self._centre is None else self._centre
        if centre.shape != (d,):
            raise ValueError(
                f"centered-clipping centre has dimension {centre.shape[0]}, updates have {d}"
            )
        total = float(n) if vector is None else float(vector.sum())
        centre, distances, factors = _clipped_steps(
            matrix,
            centre,
            vector,
            total=total,
            clip_threshold=self.clip_threshold,
            iterations=self.iterations,
        )
        self._centre = centre.copy()
        self._rounds += 1
        diagnostics = AggregationDiagnostics(scores=distances, clip_factors=factors)
        return AggregationResult(centre, diagnostics)

    def reset(self) -> None:
        """Forget the centre and the round count."""
        self._centre = None
        self._rounds = 0

    def state_dict(self) -> dict[str, Any]:
        """Return ``{"version", "rounds", "dim", "centre"}`` (the centre as float32 bytes)."""
        return vector_to_state(self._centre, self._rounds, "centre")

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state produced by :meth:`state_dict` (``ValueError`` if invalid)."""
        self._centre, self._rounds = vector_from_state(self.name, state, "centre")

    def __repr__(self) -> str:
        return (
            f"CenteredClipping(clip_threshold={self.clip_threshold!r}, "
            f"iterations={self.iterations!r})"
        )


def _clipped_steps(
    updates: UpdateMatrix,
    centre: UpdateVector,
    weights: Weights | None,
    *,
    total: float,
    clip_threshold: float | None,
    iterations: int,
) -> tuple[UpdateVector, NDArray[np.float64], NDArray[np.float64]]:
    """Run centred-clipping steps; return the centre and the last step's distances and factors.

    Step ``t`` needs the distances ``||x_i - v_t||`` over all coordinates before it can
    move any coordinate of ``v``, but column block ``b`` of ``v_(t+1)`` depends only on
    block ``b`` of the updates and of ``v_t``. So one pass over cache-sized column blocks
    moves block ``b`` to ``v_(t+1)`` and right away accumulates the squared distances to
    ``v_(t+1)`` on it: ``L`` steps read the updates ``L + 1`` times, and no ``(n, d)``
    temporary is ever made (:func:`~byzedge.coordinator.aggregation._kernels.clipped_step`). The
    arithmetic per coordinate is the definition's: float32 differences, squared norms
    summed in float32 within a block and in float64 across blocks, a float32 weighted sum
    of the differences. The first pass also proves the updates finite (``ValueError``
    otherwise), so the caller skips that check.
    """
    squared = squared_distances_to(updates, centre)  # (n,) one blocked pass
    ensure_finite(squared, updates)  # float64 squares of float32 values cannot overflow
    for step in range(iterations):
        distances = np.sqrt(squared)  # (n,)
        tau = float(np.median(distances)) if clip_threshold is None else clip_threshold
        factors = clip_factors(distances, tau)  # (n,)
        mass = factors if weights is None else factors * weights  # (n,)
        coefficients = (mass / total).astype(np.float32)  # (n,)
        last = step == iterations - 1
        centre, moved_squared = clipped_step(updates, centre, coefficients, not last)
        if moved_squared is not None:
            squared = moved_squared
    return centre, distances, factors
