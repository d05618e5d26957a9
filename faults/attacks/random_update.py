"""``random-update``: noise with the honest update's norm, a plausible-looking fake."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from byzedge.edge_agent.seams import RoundContext
from byzedge.faults.attacks.base import UpdateAttack

__all__ = ["RandomUpdate"]


class RandomUpdate(UpdateAttack):
    """Random direction, honest norm: ``u' = ||u|| * r / ||r||``, ``r ~ U(-1, 1)^d``.

    Parameters
    ----------
    start_round, probability, seed:
        See :class:`~faults.attacks.base.UpdateAttack`.

    Notes
    -----
    Unlike ``gaussian-noise`` (whose scale is fixed and usually huge), the forged update
    has exactly the norm of the device's honest one, so norm-based screening does not see
    it; it carries no information. Draws from ``context.rng``. A zero honest update
    gives a zero forged one.
    """

    name: ClassVar[str] = "random-update"

    def _forge(self, update: NDArray[np.float32], context: RoundContext) -> NDArray[np.float32]:
        noise = context.rng.uniform(-1.0, 1.0, size=update.shape)
        norm = float(np.linalg.norm(noise))
        target = float(np.linalg.norm(update.astype(np.float64)))
        if norm == 0.0 or not np.isfinite(target):
            return np.zeros_like(update, dtype=np.float32)
        return (noise * (target / norm)).astype(np.float32)
