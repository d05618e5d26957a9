"""``spikes``: impulsive readings, single values that jump to a rail and back."""

from __future__ import annotations

from typing import ClassVar, Unpack

import numpy as np

from byzedge.edge_agent.seams import LocalData, SensorSource
from byzedge.faults._validate import check_fraction, check_positive
from byzedge.faults.sensors.base import SensorFault, SensorOptions, as_features

__all__ = ["Spikes"]


class Spikes(SensorFault, intensity=0.05, check=check_fraction):
    """Impulse noise: ``x' = clip(x + s * magnitude, 0, 1)`` on a fraction ``intensity`` of values.

    Each reading is hit independently with probability ``intensity``; a hit reading gets a
    spike of sign ``s`` drawn uniformly from ``{-1, +1}``.

    Parameters
    ----------
    source:
        The wrapped sensor source.
    intensity:
        Probability in ``[0, 1]`` that a single value spikes (default 0.05).
    magnitude:
        Positive height of a spike in reading units (default 1.0: a spike hits the rail,
        0 or 1, whatever the reading was).
    start_round, probability, seed:
        See :class:`~faults.sensors.base.SensorFault`.

    Notes
    -----
    Models electromagnetic interference or a loose connector: the spikes are isolated
    values, not whole frames, and a fresh set is drawn per round (deterministic in
    ``(seed, round)``). NaN readings stay NaN.
    """

    name: ClassVar[str] = "spikes"

    def __init__(
        self,
        source: SensorSource,
        *,
        magnitude: float = 1.0,
        **options: Unpack[SensorOptions],
    ) -> None:
        self.magnitude = check_positive("magnitude", magnitude)
        super().__init__(source, **options)

    def _apply(self, data: LocalData, round_number: int, rng: np.random.Generator) -> LocalData:
        shape = data.features.shape
        hit = rng.random(shape) < self.intensity
        signs = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
        spiked = data.features + hit * signs * self.magnitude
        return LocalData(features=as_features(spiked), labels=data.labels)
