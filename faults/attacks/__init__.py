"""Device-local attacks, on the training data or on the update.

:data:`ATTACKS` maps each permanent name to its class; ``cls.acts_on`` is ``"data"``
for a sensor-source wrapper (built as ``cls(source, **params)``) and ``"update"`` for an
update-pipeline stage (built as ``cls(**params)``).
"""

from __future__ import annotations

from typing import Final

from faults.attacks.base import AttackTarget, DataAttack, UpdateAttack
from faults.attacks.gaussian_noise import GaussianNoise
from faults.attacks.label_flip import LabelFlip
from faults.attacks.sign_flip import SignFlip

__all__ = [
    "ATTACKS",
    "AttackTarget",
    "DataAttack",
    "GaussianNoise",
    "LabelFlip",
    "SignFlip",
    "UpdateAttack",
]

ATTACKS: Final[dict[str, type[DataAttack] | type[UpdateAttack]]] = {
    "label-flip": LabelFlip,
    "sign-flip": SignFlip,
    "gaussian-noise": GaussianNoise,
}
