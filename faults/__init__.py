"""The fault injector: faulty sensors and device-local attacks for real agents.

Sensor faults (:data:`SENSOR_FAULTS`) and data attacks wrap the agent's
:class:`~edge_agent.seams.SensorSource`; update attacks are
:class:`~edge_agent.seams.UpdateStage` callables appended to its update pipeline.
:class:`FaultInjector` builds both from a list of :class:`FaultSpec`. Nothing here
imports torch.
"""

from __future__ import annotations

from faults.attacks import (
    ATTACKS,
    AttackTarget,
    DataAttack,
    GaussianNoise,
    LabelFlip,
    SignFlip,
    UpdateAttack,
)
from faults.errors import FaultConfigError, FaultError
from faults.injector import FaultInjector, FaultSpec, known_fault_names
from faults.sensors import SENSOR_FAULTS, Drift, Dropout, SensorFault, SensorNoise, StuckAt

__all__ = [
    "ATTACKS",
    "SENSOR_FAULTS",
    "AttackTarget",
    "DataAttack",
    "Drift",
    "Dropout",
    "FaultConfigError",
    "FaultError",
    "FaultInjector",
    "FaultSpec",
    "GaussianNoise",
    "LabelFlip",
    "SensorFault",
    "SensorNoise",
    "SignFlip",
    "StuckAt",
    "UpdateAttack",
    "known_fault_names",
]
