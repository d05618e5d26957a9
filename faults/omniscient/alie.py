"""``alie``: A Little Is Enough (Baruch, Baruch & Goldberg, NeurIPS 2019)."""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import ClassVar, Final

import numpy as np
from numpy.typing import NDArray

from byzedge.faults._validate import check_finite
from byzedge.faults.omniscient.base import (
    CollusionContext,
    OmniscientAttack,
    honest_mean,
    honest_std,
    tile,
)

__all__ = ["Alie", "alie_z"]

_RATIO_FLOOR: Final = 1e-6


def alie_z(num_sampled: int, num_byzantine: int) -> float:
    r"""The paper's ``z_max`` for ``n`` workers of which ``f`` are Byzantine.

    .. math::

        s = \lfloor n/2 + 1 \rfloor - f, \qquad
        z_{max} = \Phi^{-1}\!\left(\frac{n - f - s}{n - f}\right)

    with ``Phi^{-1}`` the standard normal quantile (``statistics.NormalDist().inv_cdf``).
    This is the formula of the epfml, VR_Byzantine and Blades code
    (algorithms.md section 9: ``n=20, f=5`` gives ``0.253``; ``n=12, f=2`` gives 0).

    Parameters
    ----------
    num_sampled:
        ``n >= 1``.
    num_byzantine:
        ``0 <= f < n``.

    Returns
    -------
    float
        ``z_max``. The quantile's argument is clamped to ``[1e-6, 1 - 1e-6]`` so that a
        Byzantine majority (``s <= 0``, argument ``>= 1``) gives a large finite ``z``
        (about 4.75) instead of infinity.

    Raises
    ------
    ValueError
        When ``f >= n`` (no honest worker) or ``f < 0``.
    """
    n, f = int(num_sampled), int(num_byzantine)
    if f < 0 or f >= n:
        msg = f"alie needs 0 <= num_byzantine < num_sampled, got f={f}, n={n}"
        raise ValueError(msg)
    supporters = math.floor(n / 2 + 1) - f
    ratio = (n - f - supporters) / (n - f)
    ratio = min(max(ratio, _RATIO_FLOOR), 1.0 - _RATIO_FLOOR)
    return NormalDist().inv_cdf(ratio)


class Alie(OmniscientAttack):
    """ALIE: every Byzantine device sends ``mu - z * sigma`` (coordinate-wise).

    ``mu`` and ``sigma`` are the coordinate-wise mean and unbiased standard deviation
    (``ddof=1``) of the honest updates; ``z`` is :func:`alie_z` of ``n =
    context.num_sampled`` and ``f = num_byzantine`` unless fixed.

    Parameters
    ----------
    z:
        A fixed ``z`` (finite) instead of the paper's ``z_max(n, f)``: the fixed-z variant
        (ByzFL uses ``mu + 1.5 sigma``, i.e. ``z = -1.5`` here; ``z = 1.06`` is Rammal et
        al.'s). ``None`` (default) computes it from ``n`` and ``f`` every round, so it
        adapts to partial participation.

    Notes
    -----
    The shift stays within the honest spread, so it evades rules that look for outliers
    (Krum, coordinate median, trimmed mean) and drags them consistently: the ALIE paper
    reports 20 % corrupted workers degrading a CIFAR-10 model's accuracy by 50 %. Momentum
    and centered clipping (Karimireddy et al. ICML 2021) shrink ``sigma`` and so the harm.
    """

    name: ClassVar[str] = "alie"

    def __init__(self, *, z: float | None = None) -> None:
        self.z = None if z is None else check_finite("z", z)

    def z_for(self, num_sampled: int, num_byzantine: int) -> float:
        """Return the ``z`` used with ``n`` sampled and ``f`` Byzantine devices."""
        return self.z if self.z is not None else alie_z(num_sampled, num_byzantine)

    def _forge(
        self, honest: NDArray[np.float32], num_byzantine: int, context: CollusionContext
    ) -> NDArray[np.float32]:
        z = self.z_for(max(context.num_sampled, num_byzantine + 1), num_byzantine)
        return tile(honest_mean(honest) - z * honest_std(honest), num_byzantine)
