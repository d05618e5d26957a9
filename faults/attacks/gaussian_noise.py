"""``gaussian-noise``: replace the update by pure Gaussian noise."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from byzedge.edge_agent.seams import RoundContext
from byzedge.faults._validate import check_finite, check_positive
from byzedge.faults.attacks.base import UpdateAttack

__all__ = ["GaussianNoise"]


class GaussianNoise(UpdateAttack):
    """Gaussian attack: ``u' ~ N(mean, scale^2 I)``, independent of the honest update.

    Parameters
    ----------
    scale:
        Positive standard deviation (default 1000, the seed's convergence attack; ByzFL
        uses 1, Blades 0.1).
    mean:
        Mean of every coordinate (default 0; Blades uses 0.1).
    start_round, probability, seed:
        See :class:`~faults.attacks.base.UpdateAttack`.

    Notes
    -----
    Draws from ``context.rng``, the generator the agent seeds per device. The honest
    update is used only for its shape. Huge-norm noise breaks the mean; norm-based
    rules (clipping, Krum) discard or bound it.
    """

    name: ClassVar[str] = "gaussian-noise"

    def __init__(
        self,
        *,
        scale: float = 1000.0,
        mean: float = 0.0,
        start_round: int = 0,
        probability: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__(start_round=start_round, probability=probability, seed=seed)
        self.scale = check_positive("scale", scale)
        self.mean = check_finite("mean", mean)

    def _forge(self, update: NDArray[np.float32], context: RoundContext) -> NDArray[np.float32]:
        noise = context.rng.normal(self.mean, self.scale, size=update.shape)
        return noise.astype(np.float32)
