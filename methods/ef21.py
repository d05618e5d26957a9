# The docstrings write the papers' notation (gamma, alpha, sigma as Greek letters).
# ruff: noqa: RUF002
"""``byz-ef21``: Byz-EF21 (Rammal, Gruntkowska, Fedin, Gorbunov, Richtárik, AISTATS 2024).

EF21 error feedback on every device, a server mirror of every device's estimator, and the
robust rule over the mirrors (algorithms.md §3.1)::

    device   first message (or when the plan lists it for resync):
                 g_i = grad f_i(x_r), sent dense ("reset")
             otherwise:
                 c_i = C(grad f_i(x_r) - g_i)        C = the configured contractive codec
                 g_i <- g_i + c_i                      (c_i as the server decodes it)
    server   mirror_i <- grad f_i (reset) or mirror_i + c_i
             g_r = ARAgg(mirror_1, ..., mirror_n)      every device that has a mirror
             x_{r+1} = x_r - γ g_r

A device not asked in a round sends nothing, which is EF21's ``c_i = 0`` for a skipped
round (EF21-PP): its mirror stays valid. A message lost on the way leaves device and mirror
out of step; the next message's base round reveals it and the device resets
(:mod:`byzedge.methods.mirrors`).
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
    check_positive,
    check_positive_int,
    check_seed,
    descend,
    plan_bool,
    plan_int,
    round_plan,
)

__all__ = ["ByzEF21", "local_gradient"]

Vector = NDArray[np.float32]


def local_gradient(
    plan: RoundPlan,
    model: Vector,
    oracle: GradientOracle,
    seed: int,
    *,
    full_batch: bool,
    batch_size: int,
) -> Vector:
    """``grad f_i(x_r)`` over every sample, or over one ``batch_size`` minibatch."""
    if plan_bool(plan, "full_batch", full_batch):
        return np.asarray(oracle.full_gradient(model), dtype=np.float32)
    batch = plan_int(plan, "batch_size", batch_size)
    return np.asarray(oracle.minibatch_gradients([model], batch, seed)[0], dtype=np.float32)


class ByzEF21:
    """Byz-EF21, both halves.

    Parameters
    ----------
    step_size:
        ``γ`` (default 0.1).
    full_batch:
        Full local gradients, as in the paper's runs (default); ``False`` uses a
        ``batch_size`` minibatch (EF21-SGD, which keeps a ``σ²`` neighbourhood).
    batch_size:
        Minibatch size when ``full_batch`` is off (default 32).
    seed:
        Unused by the server (no coin); accepted so every method takes the fleet seed.

    Notes
    -----
    Needs a contractive compressor (``E||C(x) - x||² <= (1 - α)||x||²``, e.g. top-k with
    ``α = K/d``). The server stores ``n d`` floats of mirrors. Byzantine devices can move
    their mirrors arbitrarily: the robust rule over the mirrors is the only protection, and
    its breakdown point (``δ < 1/2`` of the mirrors) is the method's.
    """

    name: ClassVar[str] = "byz-ef21"
    compressor_class: ClassVar[Literal["unbiased", "contractive", "any"]] = "contractive"
    compressed_broadcast: ClassVar[bool] = False
    server_mirrors: ClassVar[bool] = True
    default_aggregator: ClassVar[tuple[str, Mapping[str, Any]]] = DEFAULT_AGGREGATOR
    option_names: ClassVar[tuple[str, ...]] = ("step_size", "full_batch", "batch_size", "seed")

    def __init__(self, **options: OptionValue) -> None:
        check_option_names(options, self.option_names, self.name)
        self.step_size = check_positive("step_size", options.get("step_size", 0.1))
        self.full_batch = check_bool("full_batch", options.get("full_batch", True))
        self.batch_size = check_positive_int("batch_size", options.get("batch_size", 32))
        self.seed = check_seed(options.get("seed", 0))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.plan_options()!r})"

    def plan_options(self) -> dict[str, OptionValue]:
        """What devices must use, signed into every plan."""
        return {"full_batch": self.full_batch, "batch_size": self.batch_size}

    def asks_everyone(self, plan: RoundPlan) -> bool:
        """Never required: a device left out keeps a valid mirror."""
        return False

    # -- server half ----------------------------------------------------------------------

    def plan(self, round_number: int, params: Vector, state: ServerState) -> RoundPlan:
        """Publish ``x_r``; list the devices whose mirrors are out of step."""
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
        """``grad f_i(x_r)`` dense as a reset, else ``grad f_i(x_r) - g_i`` to compress."""
        if oracle.samples == 0:
            return None
        gradient = local_gradient(
            plan, model, oracle, seed, full_batch=self.full_batch, batch_size=self.batch_size
        )
        estimator = state.vectors.get("g")
        if estimator is None or device_id in plan.resync:
            return Proposal(gradient, MethodMessage("reset", state.base_round), dense=True)
        difference = (gradient - estimator).astype(np.float32)
        return Proposal(difference, MethodMessage("difference", state.base_round))

    def commit(self, plan: RoundPlan, proposal: Proposal, sent: Vector, state: DeviceState) -> None:
        """``g_i = sent`` after a reset, ``g_i += sent`` after a difference."""
        received = np.asarray(sent, dtype=np.float32)
        if proposal.message.kind == "reset" or "g" not in state.vectors:
            state.vectors["g"] = received.copy()
        else:
            state.vectors["g"] = (state.vectors["g"] + received).astype(np.float32)
        state.base_round = plan.round
