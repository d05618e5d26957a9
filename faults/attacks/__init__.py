"""Device-local attacks, on the training data, on the update, or on the wire.

:data:`ATTACKS` maps each permanent name to its class; ``cls.acts_on`` is ``"data"`` for a
sensor-source wrapper (built as ``cls(source, **params)``), ``"update"`` for an
update-pipeline stage and ``"wire"`` for a stage run on the sealed message (both built as
``cls(**params)``). A device-local attack sees only its own data, update and the global
model; the colluding attacks that see the honest updates live in :mod:`byzedge.faults.omniscient`.
"""

from __future__ import annotations

from typing import Final

from byzedge.faults.attacks.backdoor import Backdoor, apply_trigger
from byzedge.faults.attacks.bad_signature import BadSignature
from byzedge.faults.attacks.base import AttackTarget, DataAttack, UpdateAttack, WireAttack
from byzedge.faults.attacks.garbage_payload import GarbagePayload
from byzedge.faults.attacks.gaussian_noise import GaussianNoise
from byzedge.faults.attacks.label_flip import LabelFlip
from byzedge.faults.attacks.random_update import RandomUpdate
from byzedge.faults.attacks.scaled_update import ModelReplacement, ScaledUpdate
from byzedge.faults.attacks.sign_flip import SignFlip
from byzedge.faults.attacks.stale_replay import StaleReplay
from byzedge.faults.attacks.sybil import Sybil, sybil_id
from byzedge.faults.attacks.zero_update import ZeroUpdate

__all__ = [
    "ATTACKS",
    "AttackClass",
    "AttackTarget",
    "Backdoor",
    "BadSignature",
    "DataAttack",
    "GarbagePayload",
    "GaussianNoise",
    "LabelFlip",
    "ModelReplacement",
    "RandomUpdate",
    "ScaledUpdate",
    "SignFlip",
    "StaleReplay",
    "Sybil",
    "UpdateAttack",
    "WireAttack",
    "ZeroUpdate",
    "apply_trigger",
    "sybil_id",
]

AttackClass = type[DataAttack] | type[UpdateAttack] | type[WireAttack]

ATTACKS: Final[dict[str, AttackClass]] = {
    "label-flip": LabelFlip,
    "backdoor": Backdoor,
    "sign-flip": SignFlip,
    "gaussian-noise": GaussianNoise,
    "scaled-update": ScaledUpdate,
    "model-replacement": ModelReplacement,
    "zero-update": ZeroUpdate,
    "stale-replay": StaleReplay,
    "random-update": RandomUpdate,
    "garbage-payload": GarbagePayload,
    "bad-signature": BadSignature,
    "sybil": Sybil,
}
