"""``min-max``: the largest deviation from the mean that no honest pair exceeds."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from byzedge.faults.omniscient._perturbation import LambdaSearchAttack

__all__ = ["MinMax"]


class MinMax(LambdaSearchAttack):
    r"""Min-Max (Shejwalkar & Houmansadr, "Manipulating the Byzantine", NDSS 2021).

    Every Byzantine device sends ``mal = mu - lambda * p`` with the largest ``lambda``
    (found by :func:`~byzedge.faults.omniscient._perturbation.search_lambda`) such that

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

    @staticmethod
    def _bound(distances: NDArray[np.float64]) -> float:
        return float(distances.max())

    @staticmethod
    def _score(differences: NDArray[np.float64]) -> float:
        return float(np.einsum("ij,ij->i", differences, differences).max())
