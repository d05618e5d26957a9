"""Hyper-parameter checks, the round coin and clipping, shared by the training methods.

Every method validates its options when it is built (a bad configuration fails at start,
not in round 40) and reads them back from the signed plan on the device, so the same
checks run on both sides.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from byzedge.methods.base import OptionValue, RoundPlan, ServerState

__all__ = [
    "check_bool",
    "check_fraction",
    "check_non_negative",
    "check_positive",
    "check_positive_int",
    "check_probability",
    "check_seed",
    "clip",
    "descend",
    "full_round",
    "plan_bool",
    "plan_int",
    "round_plan",
]


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def check_positive(name: str, value: object) -> float:
    """Return ``value`` as a finite float ``> 0`` or raise ``ValueError``."""
    number = _number(name, value)
    if number <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return number


def check_non_negative(name: str, value: object) -> float:
    """Return ``value`` as a finite float ``>= 0`` or raise ``ValueError``."""
    number = _number(name, value)
    if number < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return number


def check_probability(name: str, value: object) -> float:
    """Return ``value`` as a float in ``(0, 1]`` or raise ``ValueError``."""
    number = _number(name, value)
    if not 0 < number <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return number


def check_fraction(name: str, value: object) -> float:
    """Return ``value`` as a float in ``[0, 1)`` or raise ``ValueError``."""
    number = _number(name, value)
    if not 0 <= number < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return number


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` as an int ``>= 1`` or raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` if it is a bool, else raise ``ValueError``."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def check_seed(value: object) -> int:
    """Return ``value`` as the coin's seed: an integer ``>= 0`` (never a boolean)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"seed must be an integer >= 0, got {value!r}")
    return value


def round_plan(
    method: str,
    round_number: int,
    params: NDArray[np.float32],
    state: ServerState,
    *,
    full: bool,
    step_size: float,
    options: dict[str, OptionValue],
) -> RoundPlan:
    """Publish ``x_r`` into ``state`` and make the round's plan (every method's ``plan``).

    The plan names the previous model's digest (what a device differences against) and
    the devices listed for a resync.
    """
    previous = state.publish(params)
    return RoundPlan(
        algorithm=method,
        round=round_number,
        full=full,
        step_size=step_size,
        previous_sha256=previous,
        resync=frozenset(state.resync),
        options=options,
    )


def descend(
    plan: RoundPlan, params: NDArray[np.float32], state: ServerState
) -> NDArray[np.float32]:
    """``x_{r+1} = x_r - gamma g_r`` with the estimator ``state.g`` the method just set."""
    if state.g is None:
        raise ValueError("no estimator g to step with")
    return (params - np.float32(plan.step_size) * state.g).astype(np.float32)


def full_round(
    round_number: int,
    *,
    seed: int,
    probability: float,
    frequency: int | None,
    first: bool,
) -> bool:
    """The round's coin ``c_r`` of MARINA / PAGE.

    ``first`` (the server holds no estimator yet: ``g^0 = ARAgg(grad f_i(x^0))``) forces a
    full round. With ``frequency`` set, every ``frequency``-th round is full and nothing
    else (the authors' runs: one full round per epoch, ``full_grad_prob = 0``). Otherwise
    ``c_r ~ Bernoulli(probability)`` drawn from ``default_rng([seed, round_number])``, so a
    restarted coordinator draws the same coin for the round it resumes.
    """
    if first:
        return True
    if frequency is not None:
        return round_number % frequency == 0
    draw = np.random.default_rng([seed, round_number]).random()
    return bool(draw < probability)


def clip(vector: NDArray[np.float32], radius: float) -> NDArray[np.float32]:
    """``clip_λ(z) = min(1, λ / ||z||) z`` (``clip_λ(0) = 0``), float32.

    A radius of 0 returns zeros (nothing may move the estimator).
    """
    norm = float(np.linalg.norm(vector))
    if norm <= radius:
        return np.asarray(vector, dtype=np.float32)
    if radius <= 0 or not math.isfinite(norm):
        return np.zeros_like(vector, dtype=np.float32)
    return (vector * np.float32(radius / norm)).astype(np.float32)


def plan_int(plan: RoundPlan, name: str, default: int) -> int:
    """Read an integer option from the plan (a float that is integral is accepted)."""
    value: OptionValue = plan.option(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise ValueError(f"plan option {name!r} must be an integer, got {value!r}")
    return int(value)


def plan_bool(plan: RoundPlan, name: str, default: bool) -> bool:
    """Read a boolean option from the plan."""
    value = plan.option(name, default)
    if not isinstance(value, bool):
        raise ValueError(f"plan option {name!r} must be a boolean, got {value!r}")
    return value
