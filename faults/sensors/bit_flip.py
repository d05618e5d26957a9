"""``bit-flip``: single-event upsets in the float32 readings (memory or bus corruption)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from byzedge.edge_agent.seams import LocalData
from byzedge.faults._validate import check_fraction
from byzedge.faults.sensors.base import SensorFault

__all__ = ["BitFlip"]


class BitFlip(SensorFault, intensity=0.01, check=check_fraction):
    """Flip one random bit of a fraction ``intensity`` of the float32 readings.

    Each value is hit independently with probability ``intensity``; a hit value has one of
    its 32 bits, drawn uniformly, inverted: ``bits(x') = bits(x) XOR (1 << b)``,
    ``b ~ U{0..31}``.

    Parameters
    ----------
    source:
        The wrapped sensor source.
    intensity:
        Probability in ``[0, 1]`` that a value is corrupted (default 0.01).
    start_round, probability, seed:
        See :class:`~faults.sensors.base.SensorFault`.

    Notes
    -----
    The result is **not** clipped to [0, 1]: a flipped exponent bit turns 0.5 into
    ``1.7e38`` or ``2.9e-39``, a flipped sign bit makes it negative, and a reading of
    exactly 1.0 or larger can become ``inf`` or NaN, as real corrupted sensor data does.
    Low mantissa bits barely change the value. The trainer drops rows holding NaN; large
    finite or infinite values reach it unless the device validates its inputs.
    """

    name: ClassVar[str] = "bit-flip"

    def _apply(self, data: LocalData, round_number: int, rng: np.random.Generator) -> LocalData:
        features = np.array(data.features, dtype=np.float32, copy=True)
        hit = rng.random(features.shape) < self.intensity
        bits = rng.integers(0, 32, size=features.shape, dtype=np.uint32)
        masks = np.where(hit, np.left_shift(np.uint32(1), bits), np.uint32(0)).astype(np.uint32)
        corrupted = (features.view(np.uint32) ^ masks).view(np.float32)
        return LocalData(features=corrupted, labels=data.labels)
