"""``zero-update``: a free rider that sends nothing useful, ``u' = 0``."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from byzedge.edge_agent.seams import RoundContext
from byzedge.faults.attacks.base import UpdateAttack

__all__ = ["ZeroUpdate"]


class ZeroUpdate(UpdateAttack):
    """Free riding: ``u' = 0`` (the device claims to have trained and sends a zero delta).

    Parameters
    ----------
    start_round, probability, seed:
        See :class:`~faults.attacks.base.UpdateAttack`.

    Notes
    -----
    Harmless to robust rules but slows the mean (it is averaged in with full weight) and
    earns the device its share of credit. A zero vector passes every ingest check; the
    anomaly scorer sees its norm.
    """

    name: ClassVar[str] = "zero-update"

    def _forge(self, update: NDArray[np.float32], context: RoundContext) -> NDArray[np.float32]:
        return np.zeros_like(update, dtype=np.float32)
