"""The ByzFL-style line search shared by ``optimal-alie`` and ``optimal-ipm``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from byzedge.faults._validate import check_non_negative_int, check_positive
from byzedge.faults.errors import FaultConfigError
from byzedge.faults.omniscient.base import AggregateFn, CollusionContext, tile

__all__ = ["LineSearchSettings", "damage", "maximise", "require_aggregate"]


class LineSearchSettings:
    """Validated settings of :func:`maximise`.

    Parameters
    ----------
    evals:
        Objective evaluations in all (``>= 1``, default 20, ByzFL's).
    initial_step:
        First step of the expansion phase (positive, default 10).
    contraction:
        Factor in ``(0, 1)`` applied to the step in the contraction phase (default 0.8).
    """

    __slots__ = ("contraction", "evals", "initial_step")

    def __init__(self, evals: int = 20, initial_step: float = 10.0, contraction: float = 0.8):
        self.evals = check_non_negative_int("evals", evals)
        if self.evals < 1:
            msg = f"evals must be >= 1, got {evals!r}"
            raise FaultConfigError(msg)
        self.initial_step = check_positive("initial_step", initial_step)
        self.contraction = check_positive("contraction", contraction)
        if self.contraction >= 1.0:
            msg = f"contraction must be in (0, 1), got {contraction!r}"
            raise FaultConfigError(msg)


def maximise(
    objective: Callable[[float], float], start: float, settings: LineSearchSettings
) -> tuple[float, float]:
    """Maximise ``objective`` over a scalar factor, from ``start``; return ``(tau, value)``.

    Expansion: try ``tau + step``, doubling ``step`` after every improvement, until one
    fails. Contraction: multiply ``step`` by ``contraction`` and try ``tau + s * step``,
    keeping the direction ``s`` after an improvement and reversing it after a failure,
    until ``evals`` evaluations (the first at ``start``) are spent. Only improvements are
    kept, so the result is never worse than ``start``.
    """
    best_tau, best = start, objective(start)
    left = settings.evals - 1
    step = settings.initial_step
    while left > 0:
        left -= 1
        value = objective(best_tau + step)
        if value > best:
            best_tau, best = best_tau + step, value
            step *= 2.0
        else:
            break
    direction = -1.0
    while left > 0:
        left -= 1
        step *= settings.contraction
        candidate = best_tau + direction * step
        value = objective(candidate)
        if value > best:
            best_tau, best = candidate, value
        else:
            direction = -direction
    return best_tau, best


def damage(
    aggregate: AggregateFn,
    honest: NDArray[np.float32],
    forged: NDArray[np.float64],
    num_byzantine: int,
    mean: NDArray[np.float64],
) -> float:
    """``||Agg(honest + f copies of forged) - mu||``, the harm the line search maximises."""
    matrix = np.concatenate([honest, tile(forged, num_byzantine)], axis=0)
    output = np.asarray(aggregate(matrix), dtype=np.float64)
    value = float(np.linalg.norm(output - mean))
    return value if np.isfinite(value) else -np.inf


def require_aggregate(name: str, context: CollusionContext) -> AggregateFn:
    """Return ``context.aggregate`` or raise: the optimal attacks need the deployed rule."""
    if context.aggregate is None:
        msg = f"{name} needs the deployed defense: context.aggregate is None"
        raise ValueError(msg)
    return context.aggregate
