"""The lambda search shared by ``min-max`` and ``min-sum`` (Shejwalkar & Houmansadr 2021)."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import Final, Literal

import numpy as np
from numpy.typing import NDArray

from byzedge.faults._validate import check_positive
from byzedge.faults.errors import FaultConfigError
from byzedge.faults.omniscient.base import (
    CollusionContext,
    OmniscientAttack,
    honest_mean,
    honest_std,
    tile,
)

__all__ = [
    "PERTURBATIONS",
    "LambdaSearchAttack",
    "Perturbation",
    "check_perturbation",
    "pairwise_sq_distances",
    "perturbation_vector",
    "search_lambda",
]

Perturbation = Literal["unit_vec", "sign", "std"]
PERTURBATIONS: Final[tuple[Perturbation, ...]] = ("unit_vec", "sign", "std")
_MAX_STEPS: Final = 200


def check_perturbation(value: str) -> Perturbation:
    """Return ``value`` if it names a perturbation, else raise naming the parameter."""
    for known in PERTURBATIONS:
        if value == known:
            return known
    msg = f"perturbation must be one of {', '.join(PERTURBATIONS)}, got {value!r}"
    raise FaultConfigError(msg)


def perturbation_vector(
    kind: Perturbation, mean: NDArray[np.float64], honest: NDArray[np.float32]
) -> NDArray[np.float64]:
    """``p``: ``mu / ||mu||`` (0 if ``mu = 0``), ``sign(mu)`` or the honest std ``sigma``."""
    if kind == "unit_vec":
        norm = float(np.linalg.norm(mean))
        return mean / norm if norm > 0.0 else np.zeros_like(mean)
    if kind == "sign":
        signs: NDArray[np.float64] = np.sign(mean)
        return signs
    return honest_std(honest)


def pairwise_sq_distances(honest: NDArray[np.float32]) -> NDArray[np.float64]:
    """``D[i, j] = ||g_i - g_j||^2`` for the honest rows, in float64 (via the Gram matrix)."""
    rows = honest.astype(np.float64)
    norms = np.einsum("ij,ij->i", rows, rows)
    gram = rows @ rows.T
    distances: NDArray[np.float64] = np.maximum(norms[:, None] + norms[None, :] - 2.0 * gram, 0.0)
    np.fill_diagonal(distances, 0.0)
    return distances


def search_lambda(feasible: Callable[[float], bool], initial: float, tolerance: float) -> float:
    """The largest ``lambda`` found feasible by the papers' halving search.

    Start at ``lambda = initial`` with step ``initial``; after each test move by half the
    step, up when feasible (remembering it as ``lambda_succ``) and down otherwise, and
    halve the step, until ``|lambda_succ - lambda| <= tolerance``. Returns ``lambda_succ``
    (0 when nothing tested was feasible; ``lambda = 0``, the mean itself, always is).
    The search explores ``(0, 2 * initial)``.
    """
    candidate, step, succeeded = initial, initial, 0.0
    for _ in range(_MAX_STEPS):
        if abs(succeeded - candidate) <= tolerance:
            break
        if feasible(candidate):
            succeeded = candidate
            candidate += step / 2.0
        else:
            candidate -= step / 2.0
        step /= 2.0
    return succeeded


class LambdaSearchAttack(OmniscientAttack):
    """Forge ``mal = mu - lambda * p`` with the largest ``lambda`` found feasible.

    ``lambda`` is feasible when :meth:`_score` is at most :meth:`_bound`: subclasses
    supply only those two (the attack's condition); the search is :func:`search_lambda`.

    Parameters
    ----------
    perturbation, initial_lambda, tolerance:
        As documented on :class:`~faults.omniscient.min_max.MinMax`.
    """

    def __init__(
        self,
        *,
        perturbation: Perturbation = "unit_vec",
        initial_lambda: float = 10.0,
        tolerance: float = 1e-5,
    ) -> None:
        self.perturbation: Perturbation = check_perturbation(perturbation)
        self.initial_lambda = check_positive("initial_lambda", initial_lambda)
        self.tolerance = check_positive("tolerance", tolerance)

    @staticmethod
    @abstractmethod
    def _bound(distances: NDArray[np.float64]) -> float:
        """The limit, from the honest ``D[i, j] = ||g_i - g_j||^2``."""

    @staticmethod
    @abstractmethod
    def _score(differences: NDArray[np.float64]) -> float:
        """The forged vector's score, from the rows ``g_i - mal``; feasible if ``<= bound``."""

    def _forge(
        self, honest: NDArray[np.float32], num_byzantine: int, context: CollusionContext
    ) -> NDArray[np.float32]:
        mean = honest_mean(honest)
        direction = perturbation_vector(self.perturbation, mean, honest)
        bound = self._bound(pairwise_sq_distances(honest))
        rows = honest.astype(np.float64)

        def feasible(lam: float) -> bool:
            return self._score(rows - (mean - lam * direction)) <= bound

        lam = search_lambda(feasible, self.initial_lambda, self.tolerance)
        return tile(mean - lam * direction, num_byzantine)
