"""The fault injector: faulty sensors, device-local attacks and colluding attacks.

Sensor faults (:data:`SENSOR_FAULTS`) and data attacks wrap the agent's
:class:`~edge_agent.seams.SensorSource`; update attacks are
:class:`~edge_agent.seams.UpdateStage` callables appended to its update pipeline; wire
attacks (protocol-level abuse) are :class:`~edge_agent.seams.WireStage` callables run on
the sealed message (all in :data:`ATTACKS`). :class:`FaultInjector` builds them from a
list of :class:`FaultSpec`; :mod:`byzedge.faults.plan` says which device gets which. Colluding
attacks that see every honest update (:data:`OMNISCIENT_ATTACKS`) run only in the
simulator or coordinator-side in a HIL rig. Nothing here imports torch.
"""

from __future__ import annotations

from byzedge.faults.attacks import (
    ATTACKS,
    AttackTarget,
    Backdoor,
    BadSignature,
    DataAttack,
    GarbagePayload,
    GaussianNoise,
    LabelFlip,
    ModelReplacement,
    RandomUpdate,
    ScaledUpdate,
    SignFlip,
    StaleReplay,
    Sybil,
    UpdateAttack,
    WireAttack,
    ZeroUpdate,
    apply_trigger,
)
from byzedge.faults.errors import FaultConfigError, FaultError
from byzedge.faults.injector import (
    FaultInjector,
    FaultSpec,
    check_fault_name,
    is_fault_name,
    known_fault_names,
)
from byzedge.faults.omniscient import (
    OMNISCIENT_ATTACKS,
    CollusionContext,
    OmniscientAttack,
    build_colluding_attack,
)
from byzedge.faults.sensors import (
    SENSOR_FAULTS,
    BitFlip,
    CalibrationOffset,
    Drift,
    Dropout,
    SensorFault,
    SensorNoise,
    Spikes,
    StuckAt,
)

__all__ = [
    "ATTACKS",
    "OMNISCIENT_ATTACKS",
    "SENSOR_FAULTS",
    "AttackTarget",
    "Backdoor",
    "BadSignature",
    "BitFlip",
    "CalibrationOffset",
    "CollusionContext",
    "DataAttack",
    "Drift",
    "Dropout",
    "FaultConfigError",
    "FaultError",
    "FaultInjector",
    "FaultSpec",
    "GarbagePayload",
    "GaussianNoise",
    "LabelFlip",
    "ModelReplacement",
    "OmniscientAttack",
    "RandomUpdate",
    "ScaledUpdate",
    "SensorFault",
    "SensorNoise",
    "SignFlip",
    "Spikes",
    "StaleReplay",
    "StuckAt",
    "Sybil",
    "UpdateAttack",
    "WireAttack",
    "ZeroUpdate",
    "apply_trigger",
    "build_colluding_attack",
    "check_fault_name",
    "is_fault_name",
    "known_fault_names",
]
