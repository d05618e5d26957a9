"""``scaled-update`` / ``model-replacement``: boost the update so it survives averaging."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from byzedge.edge_agent.seams import RoundContext
from byzedge.faults._validate import check_non_negative_int, check_positive
from byzedge.faults.attacks.base import UpdateAttack
from byzedge.faults.errors import FaultConfigError

__all__ = ["ModelReplacement", "ScaledUpdate"]


class ScaledUpdate(UpdateAttack):
    r"""Boosted update (Bagdasaryan et al., "How To Backdoor Federated Learning", AISTATS 2020).

    The attacker trains a model ``X`` from the global model ``G`` and submits
    ``L = gamma (X - G) + G``; in byzedge's delta convention (the device sends
    ``u = X - G``) that is

    .. math:: u' = \gamma u, \qquad \gamma = n / \eta

    where ``n`` is the number of participants per round and ``eta`` the server learning
    rate, so that the server step ``G + (eta / n) * sum_i u_i`` lands on ``X`` when the
    other updates nearly cancel ("model replacement").

    Parameters
    ----------
    num_participants:
        ``n``, the devices aggregated per round (default 10, the paper's setting of
        10 participants per round). Set it to the fleet's ``devices_per_round``.
    server_learning_rate:
        ``eta``, the coordinator's step on the aggregate (positive, default 1.0).
    factor:
        If given (positive), the boost ``gamma`` itself, overriding ``n / eta``.
    start_round, probability, seed:
        See :class:`~faults.attacks.base.UpdateAttack`.

    Notes
    -----
    Breaks the mean with a single device; norm clipping, centered clipping and
    anomaly scoring on the norm bound or flag the boosted update. Bagdasaryan et al.'s
    "constrain-and-scale" (an evasion term in the loss) is not modelled.
    """

    name: ClassVar[str] = "scaled-update"

    def __init__(
        self,
        *,
        num_participants: int = 10,
        server_learning_rate: float = 1.0,
        factor: float | None = None,
        start_round: int = 0,
        probability: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__(start_round=start_round, probability=probability, seed=seed)
        self.num_participants = check_non_negative_int("num_participants", num_participants)
        if self.num_participants < 1:
            msg = f"num_participants must be >= 1, got {num_participants!r}"
            raise FaultConfigError(msg)
        self.server_learning_rate = check_positive("server_learning_rate", server_learning_rate)
        self.factor = None if factor is None else check_positive("factor", factor)

    @property
    def boost(self) -> float:
        """The applied ``gamma``: ``factor`` if given, else ``n / eta``."""
        if self.factor is not None:
            return self.factor
        return self.num_participants / self.server_learning_rate

    def _forge(self, update: NDArray[np.float32], context: RoundContext) -> NDArray[np.float32]:
        return (update * np.float32(self.boost)).astype(np.float32, copy=False)


class ModelReplacement(ScaledUpdate):
    """The same boost under the paper's name; see :class:`ScaledUpdate`."""

    name: ClassVar[str] = "model-replacement"
