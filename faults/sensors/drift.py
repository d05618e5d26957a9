"""``drift``: a calibration offset that grows linearly with every faulty round."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from edge_agent.seams import LocalData, SensorSource
from faults._validate import check_finite
from faults.sensors.base import SensorFault, as_features

__all__ = ["Drift"]


class Drift(SensorFault):
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

    def __init__(
        self,
        source: SensorSource,
        *,
        intensity: float = 0.01,
        start_round: int = 0,
        probability: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__(
            source,
            intensity=intensity,
            start_round=start_round,
            probability=probability,
            seed=seed,
        )

    @staticmethod
    def _check_intensity(intensity: object) -> float:
        return check_finite("intensity", intensity)

    def offset(self, round_number: int) -> float:
        """Return the offset applied in an active round ``round_number``."""
        return self.intensity * (round_number - self.start_round + 1)

    def _apply(self, data: LocalData, round_number: int, rng: np.random.Generator) -> LocalData:
        shifted = data.features + np.float32(self.offset(round_number))
        return LocalData(features=as_features(shifted), labels=data.labels)
