# The docstrings write the papers' notation (gamma, alpha, sigma as Greek letters).
# ruff: noqa: RUF002
"""``byz-vr-marina``: Byz-VR-MARINA (Gorbunov, Horváth, Richtárik, Gidel, ICLR 2023, Alg. 1).

The update rule, in this project's rounds (round ``r`` publishes ``x_r``; the server holds
``g_{r-1}``, the estimator ``x_r`` was stepped with)::

    server   c_r ~ Bernoulli(p)  (round 1, or no estimator yet: c_r = 1)
    device   c_r = 1:  send grad f_i(x_r)                           dense, full local gradient
             c_r = 0:  send Q(Δ̂_i),  Δ̂_i = grad f_iJ(x_r) - grad f_iJ(x_{r-1})
                       (the SAME minibatch J at both points; Q = the configured codec)
    server   rows_i = grad f_i(x_r)        if c_r = 1
                      g_{r-1} + Q(Δ̂_i)     otherwise      ("it needs just to add g^k")
             g_r = ARAgg(rows)  (robust rule; bucketing of 2 over coordinate-median by default)
             x_{r+1} = x_r - γ g_r

This is Algorithm 1 with the re-sync to the aggregated ``g``: every good estimator is
``g_{r-1} + Q(Δ̂_i)``, never the device's own running buffer (the authors' main-branch code
accumulates ``g_i += Q(Δ̂_i)``, the "no-sync" variant; algorithms.md §1.3).

A device that does not hold ``x_{r-1}`` (it missed the last model, or restarted without
it) cannot compute a difference: it skips rounds until the next full one, which needs no
previous model. The server adds ``g_{r-1}`` itself, so a skipped round costs nothing but
that device's vote.
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
from byzedge.methods.options import (
    check_bool,
    check_positive,
    check_positive_int,
    check_probability,
    check_seed,
    descend,
    full_round,
    plan_bool,
    plan_int,
    round_plan,
)

__all__ = ["ByzVRMarina", "DEFAULT_AGGREGATOR"]

Vector = NDArray[np.float32]

DEFAULT_AGGREGATOR: tuple[str, Mapping[str, Any]] = (
    "bucketing",
    {"inner": "coordinate-median", "bucket_size": 2},
)
"""The papers' ARAgg: coordinate-wise median over random buckets of 2 (algorithms.md §1.2)."""


class ByzVRMarina:
    """Byz-VR-MARINA, both halves.

    Parameters
    ----------
    step_size:
        ``γ`` of ``x_{r+1} = x_r - γ g_r`` (default 0.1).
    full_gradient_probability:
        ``p`` of the coin ``c_r ~ Bernoulli(p)`` (default 0.1; theory
        ``p = min(b/m, 1/(1+ω))``).
    reference_update_frequency:
        When set, every ``k``-th round is full and no coin is drawn (the authors' runs:
        one full round per epoch).
    batch_size:
        ``b``, the minibatch of the gradient differences (default 32).
    full_batch:
        Full rounds send the gradient over all local samples (Alg. 1); ``False`` sends a
        ``b``-minibatch gradient instead (the paper's Alg. 4/5 variant, adds a
        ``σ²/b`` term).
    seed:
        Seed of the coin (the coordinator's seed).

    Notes
    -----
    Needs an unbiased compressor (``E Q(x) = x``): a biased one (top-k) makes ``g_r``
    drift by the compression bias every round. Breakdown: the robust rule must be a
    ``(δ, c)``-ARAgg for the responding set; MARINA's guarantee holds only while
    Byzantines are below ``δ`` of the devices that answer every round (with sampled
    cohorts use ``byz-vr-marina-pp``).
    """

    name: ClassVar[str] = "byz-vr-marina"
    compressor_class: ClassVar[Literal["unbiased", "contractive", "any"]] = "unbiased"
    compressed_broadcast: ClassVar[bool] = False
    server_mirrors: ClassVar[bool] = False
    default_aggregator: ClassVar[tuple[str, Mapping[str, Any]]] = DEFAULT_AGGREGATOR
    option_names: ClassVar[tuple[str, ...]] = (
        "step_size",
        "full_gradient_probability",
        "reference_update_frequency",
        "batch_size",
        "full_batch",
        "seed",
    )

    def __init__(self, **options: OptionValue) -> None:
        check_option_names(options, self.option_names, self.name)
        self.step_size = check_positive("step_size", options.get("step_size", 0.1))
        self.full_gradient_probability = check_probability(
            "full_gradient_probability", options.get("full_gradient_probability", 0.1)
        )
        frequency = options.get("reference_update_frequency")
        self.reference_update_frequency = (
            None
            if frequency is None
            else check_positive_int("reference_update_frequency", frequency)
        )
        self.batch_size = check_positive_int("batch_size", options.get("batch_size", 32))
        self.full_batch = check_bool("full_batch", options.get("full_batch", True))
        self.seed = check_seed(options.get("seed", 0))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.plan_options()!r})"

    # -- shared -------------------------------------------------------------------------

    def plan_options(self) -> dict[str, OptionValue]:
        """What devices must use, signed into every plan."""
        return {"batch_size": self.batch_size, "full_batch": self.full_batch}

    def asks_everyone(self, plan: RoundPlan) -> bool:
        """Whether round ``plan`` must ask every device (a full round), whatever the cohort.

        A full round resets ``g`` from robust estimates of every device, which is what
        makes later rounds' differences safe to add.
        """
        return plan.full

    # -- server half ----------------------------------------------------------------------

    def plan(self, round_number: int, params: Vector, state: ServerState) -> RoundPlan:
        """Publish ``x_r`` into ``state`` and draw the round's coin."""
        full = full_round(
            round_number,
            seed=self.seed,
            probability=self.full_gradient_probability,
            frequency=self.reference_update_frequency,
            first=state.g is None,
        )
        return round_plan(
            self.name,
            round_number,
            params,
            state,
            full=full,
            step_size=self.step_size,
            options=self.plan_options(),
        )

    def rows(
        self,
        plan: RoundPlan,
        messages: Mapping[str, tuple[MethodMessage, Vector]],
        state: ServerState,
    ) -> tuple[list[str], list[Vector], dict[str, str]]:
        """``grad f_i(x_r)`` in a full round, ``g_{r-1} + Q(Δ̂_i)`` otherwise."""
        ids: list[str] = []
        rows: list[Vector] = []
        dropped: dict[str, str] = {}
        expected = "full" if plan.full else "difference"
        for device in sorted(messages):
            message, vector = messages[device]
            if message.kind != expected:
                dropped[device] = f"a {message.kind!r} message in a {expected} round"
                continue
            if not plan.full and state.g is None:
                dropped[device] = "no estimator g on the server to add a difference to"
                continue
            ids.append(device)
            rows.append(self._row(plan, vector, state))
        return ids, rows, dropped

    def _row(self, plan: RoundPlan, vector: Vector, state: ServerState) -> Vector:
        if plan.full:
            return np.asarray(vector, dtype=np.float32)
        assert state.g is not None  # noqa: S101 - checked by rows
        return (state.g + vector).astype(np.float32)

    def apply(
        self, plan: RoundPlan, params: Vector, aggregate: Vector, state: ServerState
    ) -> Vector:
        """``g_r = aggregate``; ``x_{r+1} = x_r - γ g_r``."""
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
        """A full local gradient (dense) or the minibatch gradient difference."""
        if oracle.samples == 0:
            return None
        batch = plan_int(plan, "batch_size", self.batch_size)
        if plan.full:
            if plan_bool(plan, "full_batch", self.full_batch):
                gradient = oracle.full_gradient(model)
            else:
                gradient = oracle.minibatch_gradients([model], batch, seed)[0]
            message = MethodMessage("full", state.base_round)
            return Proposal(np.asarray(gradient, dtype=np.float32), message, dense=True)
        if previous is None:
            return None  # wait for the next full round
        now, before = oracle.minibatch_gradients([model, previous], batch, seed)
        difference = (now - before).astype(np.float32)
        return Proposal(difference, MethodMessage("difference", state.base_round))

    def commit(self, plan: RoundPlan, proposal: Proposal, sent: Vector, state: DeviceState) -> None:
        """MARINA keeps no estimator on the device: only the round is recorded."""
        state.base_round = plan.round
