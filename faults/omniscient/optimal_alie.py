"""``optimal-alie``: ALIE with the factor tuned against the deployed defense."""

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
from byzedge.faults.omniscient.alie import alie_z
from byzedge.faults.omniscient.base import (
    CollusionContext,
    OmniscientAttack,
    honest_mean,
    honest_std,
    tile,
)

__all__ = ["OptimalAlie"]


class OptimalAlie(OmniscientAttack):
    r"""Optimal ALIE (ByzFL's adaptive variant of Baruch et al., NeurIPS 2019).

    Every Byzantine device sends ``mu - tau * sigma`` with the ``tau`` that maximises

    .. math:: J(\tau) = \| Agg(G \cup f \times (\mu - \tau \sigma)) - \mu \|

    against the deployed defense ``Agg = context.aggregate``, found by
    :func:`~byzedge.faults.omniscient._line_search.maximise` (expansion then contraction,
    ``evals`` evaluations).

    Parameters
    ----------
    evals, initial_step, contraction:
        The line search (defaults 20, 10, 0.8).
    initial_factor:
        Where the search starts. ``None`` (default) starts at the paper's
        ``z_max(n, f)`` (:func:`~byzedge.faults.omniscient.alie.alie_z`), so the result hurts the
        defense at least as much as plain ``alie``; ByzFL starts at 0.

    Notes
    -----
    Requires ``context.aggregate`` (the simulator passes a state-preserving copy of the
    deployed rule): a ``ValueError`` otherwise. ``evals`` aggregations per round.
    """

    name: ClassVar[str] = "optimal-alie"

    def __init__(
        self,
        *,
        evals: int = 20,
        initial_step: float = 10.0,
        contraction: float = 0.8,
        initial_factor: float | None = None,
    ) -> None:
        self.search = LineSearchSettings(evals, initial_step, contraction)
        self.initial_factor = (
            None if initial_factor is None else check_finite("initial_factor", initial_factor)
        )
        self.last_factor: float | None = None

    def _forge(
        self, honest: NDArray[np.float32], num_byzantine: int, context: CollusionContext
    ) -> NDArray[np.float32]:
        aggregate = require_aggregate(self.name, context)
        mean, std = honest_mean(honest), honest_std(honest)
        start = self.initial_factor
        if start is None:
            start = alie_z(max(context.num_sampled, num_byzantine + 1), num_byzantine)

        def objective(tau: float) -> float:
            return damage(aggregate, honest, mean - tau * std, num_byzantine, mean)

        tau, _ = maximise(objective, start, self.search)
        self.last_factor = tau
        forged: NDArray[np.float64] = mean - tau * std
        return tile(np.asarray(forged), num_byzantine)
