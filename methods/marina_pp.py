# The docstrings write the papers' notation (gamma, alpha, sigma as Greek letters).
# ruff: noqa: RUF002
"""``byz-vr-marina-pp``: Byz-VR-MARINA-PP (Malinovsky et al., NeurIPS 2024, Alg. 1).

Byz-VR-MARINA with sampled cohorts and server-side clipping of the compressed differences::

    server   c_r ~ Bernoulli(p); a full round asks EVERY device, other rounds a sampled cohort
    device   as Byz-VR-MARINA (full gradient, or Q(Δ̂_i) on one minibatch at x_r and x_{r-1})
    server   c_r = 1:  rows_i = grad f_i(x_r);              g_r = ARAgg(rows)   (no clipping)
             c_r = 0:  rows_i = clip_λ(Q(Δ̂_i)),  λ = α ||x_r - x_{r-1}||
                                                          g_r = g_{r-1} + ARAgg(rows)
             x_{r+1} = x_r - γ g_r

``α`` is ``clip_multiplier`` (theory ``2𝓛`` or ``D_Q 𝓛``; the paper tunes it in
``{0.1, 1, 10}``, App. H). Clipping is the server's: a good device sends its raw message,
and a Byzantine one could not be trusted to clip. A clipped difference moves ``g`` by at
most ``λ`` per honest-looking row, so a round whose sampled cohort happens to hold a
Byzantine majority can move ``g`` by at most ``λ = α γ ||g_{r-1}||``, and the full rounds
(everyone asked, aggregated without clipping) re-anchor ``g``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from byzedge.methods.base import OptionValue, RoundPlan, ServerState
from byzedge.methods.marina import ByzVRMarina, Vector
from byzedge.methods.options import check_positive, clip, descend

__all__ = ["ByzVRMarinaPP"]


class ByzVRMarinaPP(ByzVRMarina):
    """Byz-VR-MARINA-PP, both halves.

    Parameters
    ----------
    clip_multiplier:
        ``α`` of the clip radius ``λ_r = α ||x_r - x_{r-1}||`` (default 1.0).
    step_size, full_gradient_probability, reference_update_frequency, batch_size,
    full_batch, seed:
        As :class:`~byzedge.methods.marina.ByzVRMarina`.

    Notes
    -----
    With every device asked in every round and clipping off (``α`` large) this is exactly
    Byz-VR-MARINA. The theory's full rounds need a cohort of at least
    ``δ_real n / δ`` devices; here they ask everyone (as the authors' code does), which
    :meth:`asks_everyone` tells the coordinator and the simulator.
    """

    name: ClassVar[str] = "byz-vr-marina-pp"
    option_names: ClassVar[tuple[str, ...]] = (*ByzVRMarina.option_names, "clip_multiplier")

    def __init__(self, **options: OptionValue) -> None:
        clip_multiplier = options.pop("clip_multiplier", 1.0)
        super().__init__(**options)
        self.clip_multiplier = check_positive("clip_multiplier", clip_multiplier)

    def plan_options(self) -> dict[str, OptionValue]:
        """Devices' options, and the clip multiplier (published so the rule is auditable)."""
        return {**super().plan_options(), "clip_multiplier": self.clip_multiplier}

    def radius(self, state: ServerState) -> float:
        """``λ_r = α ||x_r - x_{r-1}||`` (0 before two models were published)."""
        if state.current_params is None or state.previous_params is None:
            return 0.0
        step = np.linalg.norm(state.current_params - state.previous_params)
        return self.clip_multiplier * float(step)

    def _row(self, plan: RoundPlan, vector: Vector, state: ServerState) -> Vector:
        # Full round: the full gradient; otherwise clip_λ(Q(Δ̂_i)), without g added.
        if plan.full:
            return np.asarray(vector, dtype=np.float32)
        return clip(np.asarray(vector, dtype=np.float32), self.radius(state))

    def apply(
        self, plan: RoundPlan, params: Vector, aggregate: Vector, state: ServerState
    ) -> Vector:
        """Full round: ``g_r = aggregate``; otherwise ``g_r = g_{r-1} + aggregate``."""
        if plan.full or state.g is None:
            state.g = np.array(aggregate, dtype=np.float32, copy=True)
        else:
            state.g = (state.g + aggregate).astype(np.float32)
        return descend(plan, params, state)
