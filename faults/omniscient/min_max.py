"""``min-max``: the largest deviation from the mean that no honest pair exceeds."""

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

__all__ = ["MinMax"]


class MinMax(OmniscientAttack):
    r"""Min-Max (Shejwalkar & Houmansadr, "Manipulating the Byzantine", NDSS 2021).

    Every Byzantine device sends ``mal = mu - lambda * p`` with the largest ``lambda``
    (found by :func:`~faults.omniscient._perturbation.search_lambda`) such that

    .. math:: \max_i \|mal - g_i\|^2 \le \max_{i,j} \|g_i - g_j\|^2

    i.e. the forged vector is no farther from any honest update than the two most distant
    honest updates are from each other.

    Parameters
    ----------
    perturbation:
        ``p``: ``"unit_vec"`` (``mu / ||mu||``, default), ``"sign"`` (``sign(mu)``) or
        ``"std"`` (the coordinate-wise honest std).
    initial_lambda:
        Start (and first step) of the search (positive, default 10, as in the paper's code).
    tolerance:
        The search stops when its step is below this (positive, default 1e-5).

    Notes
    -----
    Distance-based rules (Krum, Bulyan, NNM) cannot separate ``mal`` from the honest cloud
    by its distances, yet it sits as far as possible along ``-p``. Computed in float64.
    """

    name: ClassVar[str] = "min-max"

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
        bound = float(pairwise_sq_distances(honest).max())
        rows = honest.astype(np.float64)

        def feasible(lam: float) -> bool:
            diff = rows - (mean - lam * direction)
            return float(np.einsum("ij,ij->i", diff, diff).max()) <= bound

        lam = search_lambda(feasible, self.initial_lambda, self.tolerance)
        return tile(mean - lam * direction, num_byzantine)
