"""``ipm``: Inner Product Manipulation (Xie, Koyejo & Gupta, "Fall of Empires", UAI 2019)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from byzedge.faults._validate import check_positive
from byzedge.faults.omniscient.base import CollusionContext, OmniscientAttack, honest_mean, tile

__all__ = ["Ipm"]


class Ipm(OmniscientAttack):
    """IPM: every Byzantine device sends ``-epsilon * mu``, ``mu`` the honest mean.

    Parameters
    ----------
    epsilon:
        Positive scale (default 0.1, the value of the centered-clipping, bucketing and
        Byz-VR-MARINA code). ``epsilon = 100`` is the large variant: the mean's inner
        product with the true direction turns negative even with few Byzantines.

    Notes
    -----
    With small ``epsilon`` the forged vector is close to the honest ones (and to 0), so
    distance-based rules keep it; with ``f`` of ``n`` sending it the mean becomes
    ``(1 - f/n - epsilon f/n) mu`` and flips sign once ``epsilon > (n - f) / f``.
    """

    name: ClassVar[str] = "ipm"

    def __init__(self, *, epsilon: float = 0.1) -> None:
        self.epsilon = check_positive("epsilon", epsilon)

    def _forge(
        self, honest: NDArray[np.float32], num_byzantine: int, context: CollusionContext
    ) -> NDArray[np.float32]:
        return tile(-self.epsilon * honest_mean(honest), num_byzantine)
