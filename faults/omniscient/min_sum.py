"""``min-sum``: the largest deviation whose summed distance no honest update exceeds."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from byzedge.faults.omniscient._perturbation import LambdaSearchAttack

__all__ = ["MinSum"]


class MinSum(LambdaSearchAttack):
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

    @staticmethod
    def _bound(distances: NDArray[np.float64]) -> float:
        return float(distances.sum(axis=1).min())

    @staticmethod
    def _score(differences: NDArray[np.float64]) -> float:
        return float(np.einsum("ij,ij->", differences, differences))
