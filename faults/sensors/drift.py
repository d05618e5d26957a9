"""``drift``: a calibration offset that grows linearly with every faulty round."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from byzedge.edge_agent.seams import LocalData
from byzedge.faults._validate import check_finite
from byzedge.faults.sensors.base import SensorFault, as_features

__all__ = ["Drift"]


class Drift(SensorFault, intensity=0.01, check=check_finite):
    """Add a growing offset: ``x' = clip(x + intensity * (k - start_round + 1), 0, 1)``.

    Parameters
    ----------
    source:
        The wrapped sensor source.
    intensity:
        Offset added per round since onset (finite; negative drifts downwards).
    start_round, probability, seed:
        See :class:`~faults.sensors.base.SensorFault`.

    Notes
    -----
    The offset depends on the round number ``k`` only, not on how many rounds were
    active: with ``probability < 1`` the drift is observed intermittently but keeps
    growing underneath, like a sensor whose calibration ages whether read or not.
    """

    name: ClassVar[str] = "drift"

    def offset(self, round_number: int) -> float:
        """Return the offset applied in an active round ``round_number``."""
        return self.intensity * (round_number - self.start_round + 1)

    def _apply(self, data: LocalData, round_number: int, rng: np.random.Generator) -> LocalData:
        shifted = data.features + np.float32(self.offset(round_number))
        return LocalData(features=as_features(shifted), labels=data.labels)
