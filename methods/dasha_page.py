# The docstrings write the papers' notation (gamma, alpha, sigma as Greek letters).
# ruff: noqa: RUF002
"""``byz-dasha-page``: Byz-DASHA-PAGE (Rammal et al., AISTATS 2024, §4 of the paper).

A PAGE estimator ``h_i`` on each device, DASHA's compressed momentum message, server
mirrors of the devices' ``g_i`` and the robust rule over them (algorithms.md §4)::

    server   c_r ~ Bernoulli(p)
    device   first message (or listed for resync): h_i = g_i = grad f_i(x_r), sent dense
             otherwise:
                 h_i' = grad f_i(x_r)                                          if c_r = 1
                        h_i + grad f_iJ(x_r) - grad f_iJ(x_{r-1})  (one minibatch J) else
                 m_i  = Q(h_i' - h_i - a (g_i - h_i))      Q = the configured unbiased codec
                 g_i <- g_i + m_i;  h_i <- h_i'
    server   mirror_i <- mirror_i + m_i;  g_r = ARAgg(mirrors);  x_{r+1} = x_r - γ g_r

Unlike Byz-VR-MARINA, the message is compressed in every round, full-gradient rounds
included: only the one reset that initialises ``h_i``, ``g_i`` and the mirror is dense.
``a = 1/(2ω + 1)`` for a compressor of variance ``ω`` (RandK: ``ω = d/K - 1``).

A device without ``x_{r-1}`` cannot update ``h_i`` in a difference round and skips it; its
mirror stays valid and the next full round refreshes ``h_i``.
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
from byzedge.methods.marina import DEFAULT_AGGREGATOR
from byzedge.methods.mirrors import fold_messages, mirror_rows
from byzedge.methods.options import (
    check_bool,
    check_non_negative,
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

__all__ = ["ByzDashaPage", "dasha_momentum"]

Vector = NDArray[np.float32]


def dasha_momentum(omega: float) -> float:
    """DASHA's ``a = 1 / (2 ω + 1)`` (1 for a lossless codec, ``ω = 0``)."""
    return 1.0 / (2.0 * omega + 1.0)


class ByzDashaPage:
    """Byz-DASHA-PAGE, both halves.

    Parameters
    ----------
    step_size:
        ``γ`` (default 0.1).
    full_gradient_probability:
        PAGE's ``p`` (default 0.1; the authors' runs: ``p = b/m``).
    reference_update_frequency:
        When set, every ``k``-th round refreshes ``h_i`` with a full gradient, no coin.
    batch_size:
        ``b`` of the PAGE differences (default 32).
    full_batch:
        Refresh rounds use all local samples (default) or one ``batch_size`` minibatch.
    dasha_momentum:
        ``a`` in ``(0, 1]``; default ``1/(2 ω + 1)``.
    compression_omega:
        ``ω`` of the configured codec (the coordinator computes it from ``compression``
        and ``sparsity``); default from ``sparsity`` as RandK's ``d/K - 1``, else 0.
    sparsity:
        The codec's share of kept coordinates, used only for the default ``ω``.
    seed:
        Seed of the coin.
    """

    name: ClassVar[str] = "byz-dasha-page"
    compressor_class: ClassVar[Literal["unbiased", "contractive", "any"]] = "unbiased"
    compressed_broadcast: ClassVar[bool] = False
    server_mirrors: ClassVar[bool] = True
    default_aggregator: ClassVar[tuple[str, Mapping[str, Any]]] = DEFAULT_AGGREGATOR
    option_names: ClassVar[tuple[str, ...]] = (
        "step_size",
        "full_gradient_probability",
        "reference_update_frequency",
        "batch_size",
        "full_batch",
        "dasha_momentum",
        "compression_omega",
        "sparsity",
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
        if "compression_omega" in options:
            omega = check_non_negative("compression_omega", options["compression_omega"])
        elif "sparsity" in options:
            omega = 1.0 / check_probability("sparsity", options["sparsity"]) - 1.0
        else:
            omega = 0.0
        self.compression_omega = omega
        momentum = options.get("dasha_momentum", dasha_momentum(omega))
        self.dasha_momentum = check_probability("dasha_momentum", momentum)
        self.seed = check_seed(options.get("seed", 0))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.plan_options()!r})"

    def plan_options(self) -> dict[str, OptionValue]:
        """What devices must use, signed into every plan."""
        return {
            "batch_size": self.batch_size,
            "full_batch": self.full_batch,
            "dasha_momentum": self.dasha_momentum,
        }

    def asks_everyone(self, plan: RoundPlan) -> bool:
        """Never required: a device left out keeps a valid mirror."""
        return False

    # -- server half ----------------------------------------------------------------------

    def plan(self, round_number: int, params: Vector, state: ServerState) -> RoundPlan:
        """Publish ``x_r``, draw PAGE's coin, list the devices to resync."""
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
        """Fold the messages into the mirrors; every mirror is a row."""
        dropped = fold_messages(plan, messages, state)
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
        """The dense reset, or ``h_i' - h_i - a (g_i - h_i)`` for the codec to compress."""
        if oracle.samples == 0:
            return None
        h = state.vectors.get("h")
        g = state.vectors.get("g")
        batch = plan_int(plan, "batch_size", self.batch_size)
        if h is None or g is None or device_id in plan.resync:
            gradient = np.asarray(oracle.full_gradient(model), dtype=np.float32)
            message = MethodMessage("reset", state.base_round)
            return Proposal(gradient, message, dense=True, carry={"h": gradient})
        if plan.full:
            if plan_bool(plan, "full_batch", self.full_batch):
                h_next = np.asarray(oracle.full_gradient(model), dtype=np.float32)
            else:
                h_next = np.asarray(oracle.minibatch_gradients([model], batch, seed)[0])
        elif previous is None:
            return None  # no x_{r-1}: wait for the next full round
        else:
            now, before = oracle.minibatch_gradients([model, previous], batch, seed)
            h_next = (h + now - before).astype(np.float32)
        a = np.float32(plan.number("dasha_momentum", self.dasha_momentum))
        message_vector = (h_next - h - a * (g - h)).astype(np.float32)
        return Proposal(
            message_vector,
            MethodMessage("difference", state.base_round),
            carry={"h": h_next.astype(np.float32)},
        )

    def commit(self, plan: RoundPlan, proposal: Proposal, sent: Vector, state: DeviceState) -> None:
        """``h_i <- h_i'``; ``g_i = sent`` after a reset, ``g_i += sent`` otherwise."""
        received = np.asarray(sent, dtype=np.float32)
        if proposal.message.kind == "reset" or "g" not in state.vectors:
            state.vectors["g"] = received.copy()
        else:
            state.vectors["g"] = (state.vectors["g"] + received).astype(np.float32)
        state.vectors["h"] = np.array(proposal.carry["h"], dtype=np.float32, copy=True)
        state.base_round = plan.round
