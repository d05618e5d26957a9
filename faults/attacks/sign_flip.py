"""``sign-flip``: send the honest update reversed and scaled, ``u' = -factor * u``."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from byzedge.edge_agent.seams import RoundContext
from byzedge.faults._validate import check_positive
from byzedge.faults.attacks.base import UpdateAttack

__all__ = ["SignFlip"]


class SignFlip(UpdateAttack):
    """Sign flipping (bit flipping with a gain): ``u' = -factor * u``.

    Parameters
    ----------
    factor:
        Positive, finite gain (default 4.0). ``factor = 1`` is the classic bit-flip
        attack of the epfml code (``-g``); larger gains push the mean further off.
    start_round, probability, seed:
        See :class:`~faults.attacks.base.UpdateAttack`.

    Notes
    -----
    Computed from the device's own update only (no knowledge of honest peers). The mean
    breaks down with a single such device; coordinate median and trimmed mean tolerate a
    minority of them.
    """

    name: ClassVar[str] = "sign-flip"

    def __init__(
        self,
        *,
        factor: float = 4.0,
        start_round: int = 0,
        probability: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__(start_round=start_round, probability=probability, seed=seed)
        self.factor = check_positive("factor", factor)

    def _forge(self, update: NDArray[np.float32], context: RoundContext) -> NDArray[np.float32]:
        return (update * np.float32(-self.factor)).astype(np.float32, copy=False)
