"""``shift-back``: pull the model back to its start in Byzantine-majority rounds."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from byzedge.faults._validate import check_positive
from byzedge.faults.omniscient.base import CollusionContext, OmniscientAttack, honest_mean, tile

__all__ = ["ShiftBack"]


class ShiftBack(OmniscientAttack):
    r"""Shift-back: pull the model back to ``x^0`` when the Byzantines hold the majority.

    Malinovsky, Richtárik, Horváth & Gorbunov, "Byzantine Robustness and Partial
    Participation Can Be Achieved at Once: Just Clip Gradient Differences", NeurIPS 2024.

    When the Byzantines hold the majority of the sampled cohort (``2 f > n``, ``n =
    context.num_sampled``) each sends the paper's gradient
    ``g = (mult / gamma) (x^k - x^0)``, which makes the step ``x^k - gamma g`` land at
    ``x^k - mult (x^k - x^0)``. With byzedge's deltas and step ``x <- x + eta * u``
    (``eta = context.server_learning_rate``) the same pull is

    .. math:: u_{mal} = -\frac{mult}{\eta} (x^k - x^0)

    Otherwise they behave honestly and send the honest mean ``mu`` (staying invisible).

    Parameters
    ----------
    mult:
        Positive strength (default 1.0: a full return to ``x^0`` if the aggregate is
        ``u_mal``; the paper used ``mult = gamma`` on a9a and 2.0 on MNIST).

    Notes
    -----
    Needs ``context.global_params`` and ``context.initial_params``. With a Byzantine
    majority no aggregator alone can resist it; clipping the update's difference to a
    radius tied to the last step (Byz-VR-MARINA-PP, ``clipping-vr``) bounds the damage of
    those rounds, so the model still converges.
    """

    name: ClassVar[str] = "shift-back"

    def __init__(self, *, mult: float = 1.0) -> None:
        self.mult = check_positive("mult", mult)

    @staticmethod
    def attacks(num_byzantine: int, num_sampled: int) -> bool:
        """Whether ``f`` Byzantines out of ``n`` sampled hold a strict majority."""
        return 2 * num_byzantine > num_sampled

    def _forge(
        self, honest: NDArray[np.float32], num_byzantine: int, context: CollusionContext
    ) -> NDArray[np.float32]:
        if not self.attacks(num_byzantine, context.num_sampled):
            return tile(honest_mean(honest), num_byzantine)
        current = np.asarray(context.global_params, dtype=np.float64)
        start = np.asarray(context.initial_params, dtype=np.float64)
        if current.shape != (honest.shape[1],) or start.shape != current.shape:
            msg = (
                f"shift-back: global_params {current.shape} and initial_params {start.shape} "
                f"must both have shape ({honest.shape[1]},)"
            )
            raise ValueError(msg)
        pull = -(self.mult / context.server_learning_rate) * (current - start)
        return tile(pull, num_byzantine)
