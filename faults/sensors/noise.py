"""``sensor-noise``: additive white Gaussian noise on every reading."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from byzedge.edge_agent.seams import LocalData
from byzedge.faults._validate import check_non_negative
from byzedge.faults.sensors.base import SensorFault, as_features

__all__ = ["SensorNoise"]


class SensorNoise(SensorFault, intensity=0.1, check=check_non_negative):
    """Add i.i.d. Gaussian noise to every reading: ``x' = clip(x + N(0, intensity^2), 0, 1)``.

    Parameters
    ----------
    source:
        The wrapped sensor source.
    intensity:
        Standard deviation of the noise (``>= 0``), in the units of the [0, 1] readings.
    start_round, probability, seed:
        See :class:`~faults.sensors.base.SensorFault`.

    Notes
    -----
    Clipping to [0, 1] shrinks the observed standard deviation for readings near the
    bounds; NaN readings stay NaN. A fresh noise draw is made per round (deterministic in
    ``(seed, round)``).
    """

    name: ClassVar[str] = "sensor-noise"

    def _apply(self, data: LocalData, round_number: int, rng: np.random.Generator) -> LocalData:
        noise = rng.normal(0.0, self.intensity, size=data.features.shape)
        return LocalData(features=as_features(data.features + noise), labels=data.labels)
