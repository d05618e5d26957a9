"""Sensor faults: wrappers of the agent's :class:`~edge_agent.seams.SensorSource`.

:data:`SENSOR_FAULTS` maps each permanent name (what fault plans and reports write) to
its class. Every class is built as ``cls(source, **params)``.
"""

from __future__ import annotations

from typing import Final

from byzedge.faults.sensors.base import SensorFault
from byzedge.faults.sensors.bit_flip import BitFlip
from byzedge.faults.sensors.calibration import CalibrationOffset
from byzedge.faults.sensors.drift import Drift
from byzedge.faults.sensors.dropout import Dropout
from byzedge.faults.sensors.noise import SensorNoise
from byzedge.faults.sensors.spikes import Spikes
from byzedge.faults.sensors.stuck_at import StuckAt

__all__ = [
    "SENSOR_FAULTS",
    "BitFlip",
    "CalibrationOffset",
    "Drift",
    "Dropout",
    "SensorFault",
    "SensorNoise",
    "Spikes",
    "StuckAt",
]

SENSOR_FAULTS: Final[dict[str, type[SensorFault]]] = {
    "stuck-at": StuckAt,
    "sensor-noise": SensorNoise,
    "drift": Drift,
    "dropout": Dropout,
    "spikes": Spikes,
    "bit-flip": BitFlip,
    "calibration-offset": CalibrationOffset,
}
