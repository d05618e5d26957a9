# The docstrings write the papers' notation (gamma, alpha, sigma as Greek letters).
# ruff: noqa: RUF002
"""``clip21-sgd2m``: Byz-Clip21-SGD2M (Islamov et al., arXiv 2502.11682 and 2603.23472, Alg. 1).

Double momentum, clipping with error feedback, optional Gaussian noise, robust aggregation
of server mirrors (algorithms.md §5.2-5.3)::

    device   v_i <- (1 - β) v_i + β grad f_i(x_r; minibatch)       client momentum
             u_i  = clip_τ(v_i - g_i)                              clipped EF step
             send c_i = u_i + N(0, (σ τ)² I)                       σ = dp_noise_multiplier
             g_i <- g_i + β̂ u_i                                    (u_i, not the noise)
    server   m_i <- m_i + β̂ c_i;   g_r = ARAgg(m_1, ..., m_n);   x_{r+1} = x_r - γ g_r

Everything starts at zero (``v_i = g_i = m_i = 0``), so a device's first message needs no
reset. This project's configuration names the momenta by the weight on the *previous*
value: ``momentum1 = 1 - β`` and ``momentum2 = 1 - β̂`` (the paper's tuning
``β = 0.1, β̂ ∈ {0.01, 0.1}`` is ``momentum1 = 0.9``, ``momentum2 ∈ {0.99, 0.9}``).

What the noise gives, and what it does not
-------------------------------------------
Each difference message is a Gaussian mechanism: whatever the device's data, ``u_i`` lies
in the ball of radius ``τ``, so two local datasets (any two, the whole dataset swapped)
change ``u_i`` by at most ``2τ`` in ℓ2, and ``c_i = u_i + N(0, σ²τ² I)`` is
``ρ``-zCDP with ``ρ = (2τ)² / (2 σ²τ²) = 2/σ²`` with respect to the device's whole local
dataset, seen by anyone who reads the message (the server, the broker, an eavesdropper
past TLS): *local*, *dataset-level* DP of one message (``(ε, δ)``-DP with
``ε = 2 sqrt(2 ln(1.25/δ)) / σ`` for ``ε <= 1``, the classic Gaussian-mechanism bound).

It does not give more than that:

* **No accounting over rounds.** ``T`` messages of one device compose (adaptively) to
  ``2T/σ²``-zCDP at best; nothing here tracks or caps the budget, and no subsampling
  amplification is claimed for rounds a device sits out.
* **Reset messages are not private.** A device asked to resync sends ``g_i`` whole, dense
  and without noise; ``g_i`` is a sum of un-noised clipped steps. A fleet that needs the
  guarantee must not resync (or must treat each reset as releasing ``g_i``).
* **The noise must be unpredictable to the reader.** By default it is drawn from fresh
  operating-system entropy; ``secret_noise = False`` (tests and the simulator, for
  reproducible runs) derives it from the round's seed, which a coordinator that knows the
  fleet seed can recompute: no privacy at all.
* Not user-level DP across devices, not DP of the global model against the devices (the
  model is a post-processing of the messages, so it inherits the per-message guarantee,
  nothing stronger), and nothing about metadata (who sent, when, message sizes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import numpy as np
from numpy.typing import NDArray

from byzedge.methods.base import (
    DeviceState,
    GradientOracle,
    MethodMessage,
    OptionValue,
    Proposal,
    RoundPlan,
    ServerState,
    check_option_names,
)
from byzedge.methods.ef21 import local_gradient
from byzedge.methods.marina import DEFAULT_AGGREGATOR
from byzedge.methods.mirrors import fold_messages, mirror_rows
from byzedge.methods.options import (
    check_bool,
    check_fraction,
    check_non_negative,
    check_positive,
    check_positive_int,
    check_seed,
    clip,
    descend,
    round_plan,
)

__all__ = ["Clip21SGD2M"]

Vector = NDArray[np.float32]

# Domain separation of the noise seed from the minibatch seed (same round seed).
_NOISE_STREAM = 0x6E6F6973


class Clip21SGD2M:
    """Byz-Clip21-SGD2M, both halves.

    Parameters
    ----------
    step_size:
        ``γ`` (default 0.1).
    momentum1:
        Weight on the previous client momentum, ``1 - β`` (default 0.9).
    momentum2:
        Weight kept by the error-feedback estimator, ``1 - β̂`` (default 0.9).
    clip_norm:
        ``τ`` (default 1.0).
    dp_noise_multiplier:
        ``σ``: noise ``N(0, (σ τ)² I)`` on every difference message (default 0, no noise).
    batch_size:
        Minibatch of the stochastic gradient (default 32).
    full_batch:
        Use full local gradients instead (default ``False``).
    seed:
        Unused by the server (no coin).
    secret_noise:
        Device-side only, never in a plan: draw the noise from OS entropy (default
        ``True``); ``False`` derives it from the round's seed (reproducible, not private).
    """

    name: ClassVar[str] = "clip21-sgd2m"
    compressor_class: ClassVar[Literal["unbiased", "contractive", "any"]] = "any"
    compressed_broadcast: ClassVar[bool] = False
    server_mirrors: ClassVar[bool] = True
    default_aggregator: ClassVar[tuple[str, Mapping[str, Any]]] = DEFAULT_AGGREGATOR
    option_names: ClassVar[tuple[str, ...]] = (
        "step_size",
        "momentum1",
        "momentum2",
        "clip_norm",
        "dp_noise_multiplier",
        "batch_size",
        "full_batch",
        "seed",
        "secret_noise",
    )

    def __init__(self, **options: OptionValue) -> None:
        check_option_names(options, self.option_names, self.name)
        self.step_size = check_positive("step_size", options.get("step_size", 0.1))
        self.momentum1 = check_fraction("momentum1", options.get("momentum1", 0.9))
        self.momentum2 = check_fraction("momentum2", options.get("momentum2", 0.9))
        self.clip_norm = check_positive("clip_norm", options.get("clip_norm", 1.0))
        self.dp_noise_multiplier = check_non_negative(
            "dp_noise_multiplier", options.get("dp_noise_multiplier", 0.0)
        )
        self.batch_size = check_positive_int("batch_size", options.get("batch_size", 32))
        self.full_batch = check_bool("full_batch", options.get("full_batch", False))
        self.secret_noise = check_bool("secret_noise", options.get("secret_noise", True))
        self.seed = check_seed(options.get("seed", 0))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.plan_options()!r})"

    def plan_options(self) -> dict[str, OptionValue]:
        """What devices must use, signed into every plan (``secret_noise`` is not)."""
        return {
            "momentum1": self.momentum1,
            "momentum2": self.momentum2,
            "clip_norm": self.clip_norm,
            "dp_noise_multiplier": self.dp_noise_multiplier,
            "batch_size": self.batch_size,
            "full_batch": self.full_batch,
        }

    def asks_everyone(self, plan: RoundPlan) -> bool:
        """Never required: a device left out keeps a valid mirror."""
        return False

    def _beta_hat(self, plan: RoundPlan) -> float:
        return 1.0 - plan.number("momentum2", self.momentum2)

    # -- server half ----------------------------------------------------------------------

    def plan(self, round_number: int, params: Vector, state: ServerState) -> RoundPlan:
        """Publish ``x_r``; list the devices to resync."""
        return round_plan(
            self.name,
            round_number,
            params,
            state,
            full=False,
            step_size=self.step_size,
            options=self.plan_options(),
        )

    def rows(
        self,
        plan: RoundPlan,
        messages: Mapping[str, tuple[MethodMessage, Vector]],
        state: ServerState,
    ) -> tuple[list[str], list[Vector], dict[str, str]]:
        """``m_i += β̂ c_i`` (zero-started), a reset sets ``m_i``; every mirror is a row."""
        dropped = fold_messages(plan, messages, state, scale=self._beta_hat(plan), zero_start=True)
        ids, rows = mirror_rows(state)
        return ids, rows, dropped

    def apply(
        self, plan: RoundPlan, params: Vector, aggregate: Vector, state: ServerState
    ) -> Vector:
        """``g_r = ARAgg(mirrors)``; ``x_{r+1} = x_r - γ g_r``."""
        state.g = np.array(aggregate, dtype=np.float32, copy=True)
        return descend(plan, params, state)

    # -- device half ----------------------------------------------------------------------

    def propose(
        self,
        plan: RoundPlan,
        model: Vector,
        previous: Vector | None,
        oracle: GradientOracle,
        state: DeviceState,
        *,
        device_id: str,
        seed: int,
    ) -> Proposal | None:
        """``clip_τ(v_i' - g_i) + noise``; a listed device resends ``g_i`` (dense, no noise)."""
        if oracle.samples == 0:
            return None
        g = state.vectors.get("g")
        if g is not None and device_id in plan.resync:
            return Proposal(g.copy(), MethodMessage("reset", state.base_round), dense=True)
        if g is None:
            g = np.zeros(oracle.dim, dtype=np.float32)
        v = state.vectors.get("v")
        v = np.zeros(oracle.dim, dtype=np.float32) if v is None else v
        gradient = local_gradient(
            plan, model, oracle, seed, full_batch=self.full_batch, batch_size=self.batch_size
        )
        keep = np.float32(plan.number("momentum1", self.momentum1))
        v_next = (keep * v + (1 - keep) * gradient).astype(np.float32)
        tau = plan.number("clip_norm", self.clip_norm)
        step = clip((v_next - g).astype(np.float32), tau)
        sigma = plan.number("dp_noise_multiplier", self.dp_noise_multiplier)
        message = step
        if sigma > 0:
            rng = (
                np.random.default_rng()
                if self.secret_noise
                else np.random.default_rng([seed, _NOISE_STREAM])
            )
            noise = rng.normal(0.0, sigma * tau, size=step.shape).astype(np.float32)
            message = (step + noise).astype(np.float32)
        return Proposal(
            message,
            MethodMessage("difference", state.base_round),
            carry={"v": v_next, "u": step},
        )

    def commit(self, plan: RoundPlan, proposal: Proposal, sent: Vector, state: DeviceState) -> None:
        """``v_i <- v_i'``; ``g_i += β̂ u_i`` (the clipped step without its noise)."""
        state.base_round = plan.round
        if proposal.message.kind == "reset":
            return  # g_i unchanged: the mirror now equals it
        dim = proposal.vector.shape[0]
        g = state.vectors.get("g", np.zeros(dim, dtype=np.float32))
        state.vectors["v"] = np.array(proposal.carry["v"], dtype=np.float32, copy=True)
        beta_hat = np.float32(self._beta_hat(plan))
        state.vectors["g"] = (g + beta_hat * proposal.carry["u"]).astype(np.float32)
