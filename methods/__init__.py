"""Training methods: what a device computes and sends, and what the server makes of it.

The registry is an explicit dict keyed by each method's permanent name (the config key
``algorithm``, the CLI's ``--algorithm``, the plan's ``algorithm``); ``fedavg``, today's
local epochs and parameter delta, is not a class here but the absence of one (the agent's
and coordinator's own path). See :mod:`byzedge.methods.base` for the contract.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Final, Protocol

from byzedge.methods.base import OptionValue, RoundPlan, TrainingMethod
from byzedge.methods.clip21_sgd2m import Clip21SGD2M
from byzedge.methods.dasha_page import ByzDashaPage
from byzedge.methods.ef21 import ByzEF21
from byzedge.methods.ef21_bc import ByzEF21BC
from byzedge.methods.marina import ByzVRMarina
from byzedge.methods.marina_pp import ByzVRMarinaPP

__all__ = [
    "FEDAVG",
    "METHODS",
    "BuiltMethod",
    "ByzDashaPage",
    "ByzEF21",
    "ByzEF21BC",
    "ByzVRMarina",
    "ByzVRMarinaPP",
    "Clip21SGD2M",
    "build_method",
    "is_method",
]

FEDAVG: Final = "fedavg"
"""The default ``algorithm``: local epochs and the parameter delta (no method class)."""


class BuiltMethod(TrainingMethod, Protocol):
    """A registered method: the contract plus what the rest of the system reads from it."""

    default_aggregator: ClassVar[tuple[str, Mapping[str, Any]]]
    option_names: ClassVar[tuple[str, ...]]

    def __init__(self, **options: OptionValue) -> None: ...

    def plan_options(self) -> dict[str, OptionValue]:
        """The options signed into every plan."""
        ...

    def asks_everyone(self, plan: RoundPlan) -> bool:
        """Whether the round must ask every device whatever the cohort sampling says."""
        ...


METHODS: Final[Mapping[str, type[BuiltMethod]]] = MappingProxyType(
    {
        ByzVRMarina.name: ByzVRMarina,
        ByzVRMarinaPP.name: ByzVRMarinaPP,
        ByzEF21.name: ByzEF21,
        ByzEF21BC.name: ByzEF21BC,
        ByzDashaPage.name: ByzDashaPage,
        Clip21SGD2M.name: Clip21SGD2M,
    }
)


def is_method(name: str) -> bool:
    """Whether ``name`` is a registered training method (``fedavg`` is not one)."""
    return name in METHODS


def build_method(name: str, **options: OptionValue) -> BuiltMethod:
    """Return method ``name`` built with ``options``.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the known ones), an option the method does
        not take (the message lists those it takes) or a bad value.
    """
    try:
        method_type = METHODS[name]
    except KeyError:
        known = ", ".join(sorted(METHODS))
        raise ValueError(f"unknown training method {name!r}; known: {known}") from None
    return method_type(**options)
