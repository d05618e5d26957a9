"""Robust anomaly scores for the updates of one round.

Each update gets two one-sided robust z-scores (Hampel's median/MAD rule; Hampel,
"The Influence Curve and Its Role in Robust Estimation", JASA 1974; Rousseeuw & Croux,
JASA 1993, for the 1.4826 consistency constant):

* of its L2 norm ``||x_i||`` (scaled-up updates, noise), and
* of its L2 distance ``||x_i - c||`` to a robust centre ``c`` (by default the coordinate-wise
  median of the round's updates), which also catches updates of ordinary norm that point
  the wrong way (sign flips, shifted means).

``z(v_i) = (v_i - median(v)) / (1.4826 * MAD(v))`` with ``MAD(v) = median_i |v_i - median(v)|``.
Only large values are suspicious, so the score is ``max(z_norm, z_distance)`` and an update is
flagged when it exceeds ``threshold`` (3.0 by default, the ``anomaly_threshold`` config key).
Median and MAD have breakdown point 1/2: while fewer than half of the updates are
anomalous, the anomalous ones cannot hide by inflating the spread.

The scores are a signal for reputation and alerts, not a defence on their own; the robust
aggregator stays the safety net.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from coordinator.aggregation.base import row_norms, validate_positive, validate_updates
from coordinator.aggregation.coordinate_median import coordinate_median

__all__ = ["MAD_TO_STD", "MIN_UPDATES", "AnomalyScores", "robust_z", "score_updates"]

MAD_TO_STD = 1.4826
"""Scale that makes the MAD a consistent estimator of the standard deviation of a normal."""

MIN_UPDATES = 3
"""Below this many updates nothing is flagged: there is no majority to compare against."""

_TINY = 1e-30  # keeps the divisor positive when every value (and the scale) is zero


@dataclass(frozen=True, slots=True)
class AnomalyScores:
    """Per-update anomaly scores of one round (every array has shape ``(n,)``).

    Attributes
    ----------
    norm_z:
        float64 robust z-score of each update's L2 norm.
    distance_z:
        float64 robust z-score of each update's L2 distance to the robust centre.
    score:
        float64 ``max(norm_z, distance_z)``.
    flagged:
        bool, ``score > threshold`` (all ``False`` when ``n < 3``).
    """

    norm_z: NDArray[np.float64]
    distance_z: NDArray[np.float64]
    score: NDArray[np.float64]
    flagged: NDArray[np.bool_]

    @property
    def flagged_indices(self) -> tuple[int, ...]:
        """Indices of the flagged updates, in increasing order."""
        return tuple(int(i) for i in np.flatnonzero(self.flagged))


def robust_z(values: NDArray[np.float64], floor: float) -> NDArray[np.float64]:
    """Return ``(v - median(v)) / max(1.4826 * MAD(v), floor)`` for float64 ``values`` ``(n,)``.

    Parameters
    ----------
    values:
        float64 ``(n,)``, finite.
    floor:
        Smallest scale used, ``> 0``; it keeps near-identical values (MAD close to 0) from
        turning rounding noise into huge scores.
    """
    centre = float(np.median(values))
    mad = float(np.median(np.abs(values - centre)))
    scale = max(MAD_TO_STD * mad, floor)
    return (values - centre) / scale


def score_updates(
    updates: ArrayLike,
    threshold: float = 3.0,
    centre: ArrayLike | None = None,
    *,
    relative_floor: float = 1e-3,
) -> AnomalyScores:
    """Score the updates of one round and flag the outliers.

    Parameters
    ----------
    updates:
        float32 ``(n, d)``, finite.
    threshold:
        ``> 0``; an update is flagged when its score exceeds it.
    centre:
        float ``(d,)``: the robust centre to measure distances from; ``None`` uses the
        coordinate-wise median of ``updates``. Pass e.g. the aggregate of a robust rule.
    relative_floor:
        ``> 0``; the MAD scale is floored at ``relative_floor * median_i ||x_i||`` (and a
        tiny absolute value), so that a round of (near-)identical honest updates flags
        nobody, while an update far outside still gets a huge score.

    Returns
    -------
    AnomalyScores
        The z-scores, the combined score and the flags.

    Raises
    ------
    ValueError
        On malformed updates or centre, or a non-positive ``threshold``/``relative_floor``.
    """
    limit = validate_positive("threshold", threshold)
    relative = validate_positive("relative_floor", relative_floor)
    matrix = validate_updates(updates)
    n, d = matrix.shape
    if centre is None:
        middle = coordinate_median(matrix)  # (d,)
    else:
        middle = np.asarray(centre, dtype=np.float32)
        if middle.shape != (d,):
            raise ValueError(f"centre must have shape ({d},), got shape {middle.shape}")
        if not np.isfinite(middle).all():
            raise ValueError("centre contains NaN or Inf")
    norms = row_norms(matrix)  # (n,)
    distances = row_norms(matrix - middle)  # (n,)
    floor = max(relative * float(np.median(norms)), _TINY)
    norm_z = robust_z(norms, floor)  # (n,)
    distance_z = robust_z(distances, floor)  # (n,)
    score = np.maximum(norm_z, distance_z)  # (n,)
    flagged = score > limit if n >= MIN_UPDATES else np.zeros(n, dtype=np.bool_)
    return AnomalyScores(norm_z=norm_z, distance_z=distance_z, score=score, flagged=flagged)
