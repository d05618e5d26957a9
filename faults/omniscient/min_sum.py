"""``min-sum``: the largest deviation whose summed distance no honest update exceeds."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from faults._validate import check_positive
from faults.omniscient._perturbation import (
    Perturbation,
    check_perturbation,
    pairwise_sq_distances,
    perturbation_vector,
    search_lambda,
)
from faults.omniscient.base import CollusionContext, OmniscientAttack, honest_mean, tile

__all__ = ["MinSum"]


class MinSum(OmniscientAttack):
    r"""Min-Sum (Shejwalkar & Houmansadr, "Manipulating the Byzantine", NDSS 2021).

    Every Byzantine device sends ``mal = mu - lambda * p`` with the largest ``lambda``
    such that

    .. math:: \sum_i \|mal - g_i\|^2 \le \min_i \sum_j \|g_i - g_j\|^2

    (the paper's code takes the **min** over honest scores, stricter than the "max"
    sometimes quoted). ``lambda = 0`` always qualifies.

    Parameters
    ----------
    perturbation, initial_lambda, tolerance:
        As for :class:`~faults.omniscient.min_max.MinMax` (defaults ``"unit_vec"``, 10,
        1e-5).

    Notes
    -----
    Aimed at rules that score by summed distances (Krum, multi-Krum): ``mal``'s score is
    no worse than the best honest one. Computed in float64.
    """

    name: ClassVar[str] = "min-sum"

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

    def _forge(
        self, honest: NDArray[np.float32], num_byzantine: int, context: CollusionContext
    ) -> NDArray[np.float32]:
        mean = honest_mean(honest)
        direction = perturbation_vector(self.perturbation, mean, honest)
        bound = float(pairwise_sq_distances(honest).sum(axis=1).min())
        rows = honest.astype(np.float64)

        def feasible(lam: float) -> bool:
            diff = rows - (mean - lam * direction)
            return float(np.einsum("ij,ij->", diff, diff)) <= bound

        lam = search_lambda(feasible, self.initial_lambda, self.tolerance)
        return tile(mean - lam * direction, num_byzantine)
