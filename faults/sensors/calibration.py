"""``calibration-offset``: a sensor out of calibration, with a constant offset and gain."""

from __future__ import annotations

from typing import ClassVar, Unpack

import numpy as np

from byzedge.edge_agent.seams import LocalData, SensorSource
from byzedge.faults._validate import check_finite
from byzedge.faults.sensors.base import SensorFault, SensorOptions, as_features

__all__ = ["CalibrationOffset"]


class CalibrationOffset(SensorFault, intensity=0.1, check=check_finite):
    """Mis-calibration: ``x' = clip(gain * x + intensity, 0, 1)``.

    Parameters
    ----------
    source:
        The wrapped sensor source.
    intensity:
        The constant offset (finite, default 0.1; negative reads low).
    gain:
        The constant gain (finite, default 1.0: offset only).
    start_round, probability, seed:
        See :class:`~faults.sensors.base.SensorFault`.

    Notes
    -----
    Unlike ``drift``, the error does not grow with time: a sensor mounted or replaced with
    the wrong calibration constants. NaN readings stay NaN.
    """

    name: ClassVar[str] = "calibration-offset"

    def __init__(
        self,
        source: SensorSource,
        *,
        gain: float = 1.0,
        **options: Unpack[SensorOptions],
    ) -> None:
        self.gain = check_finite("gain", gain)
        super().__init__(source, **options)

    def _apply(self, data: LocalData, round_number: int, rng: np.random.Generator) -> LocalData:
        calibrated = data.features * np.float32(self.gain) + np.float32(self.intensity)
        return LocalData(features=as_features(calibrated), labels=data.labels)
