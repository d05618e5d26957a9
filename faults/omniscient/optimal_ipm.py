"""``optimal-ipm``: IPM with the factor tuned against the deployed defense."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from byzedge.faults._validate import check_finite
from byzedge.faults.omniscient._line_search import (
    LineSearchSettings,
    damage,
    maximise,
    require_aggregate,
)
from byzedge.faults.omniscient.base import CollusionContext, OmniscientAttack, honest_mean, tile

__all__ = ["OptimalIpm"]


class OptimalIpm(OmniscientAttack):
    r"""Optimal IPM (ByzFL's adaptive variant of Xie et al., UAI 2019).

    Every Byzantine device sends ``-tau * mu`` with the ``tau`` that maximises

    .. math:: J(\tau) = \| Agg(G \cup f \times (-\tau \mu)) - \mu \|

    against ``Agg = context.aggregate``, by the same line search as ``optimal-alie``.

    Parameters
    ----------
    evals, initial_step, contraction:
        The line search (defaults 20, 10, 0.8).
    initial_factor:
        Where the search starts (finite, default 0.1, plain ``ipm``'s ``epsilon``: the
        result hurts the defense at least as much as ``ipm`` with that epsilon).

    Notes
    -----
    Requires ``context.aggregate``; a ``ValueError`` otherwise.
    """

    name: ClassVar[str] = "optimal-ipm"

    def __init__(
        self,
        *,
        evals: int = 20,
        initial_step: float = 10.0,
        contraction: float = 0.8,
        initial_factor: float = 0.1,
    ) -> None:
        self.search = LineSearchSettings(evals, initial_step, contraction)
        self.initial_factor = check_finite("initial_factor", initial_factor)
        self.last_factor: float | None = None

    def _forge(
        self, honest: NDArray[np.float32], num_byzantine: int, context: CollusionContext
    ) -> NDArray[np.float32]:
        aggregate = require_aggregate(self.name, context)
        mean = honest_mean(honest)

        def objective(tau: float) -> float:
            return damage(aggregate, honest, -tau * mean, num_byzantine, mean)

        tau, _ = maximise(objective, self.initial_factor, self.search)
        self.last_factor = tau
        return tile(-tau * mean, num_byzantine)
