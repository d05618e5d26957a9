"""Colluding (omniscient) attacks: they see the round's honest updates (simulation and HIL).

:data:`OMNISCIENT_ATTACKS` maps each permanent name to its class (built as
``cls(**params)``); every instance is called as
``attack(honest (h, d), num_byzantine, context) -> (num_byzantine, d)`` (see
:mod:`byzedge.faults.omniscient.base` for the exact contract and the sign convention).
:func:`build_colluding_attack` also accepts a user's ``"module:function"``
(:mod:`byzedge.faults.omniscient.plugin`). Pure numpy: no torch, no scipy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from byzedge.faults.errors import FaultConfigError
from byzedge.faults.omniscient.alie import Alie, alie_z
from byzedge.faults.omniscient.base import (
    AggregateFn,
    ColludingAttack,
    CollusionContext,
    OmniscientAttack,
)
from byzedge.faults.omniscient.ipm import Ipm
from byzedge.faults.omniscient.mimic import Mimic
from byzedge.faults.omniscient.min_max import MinMax
from byzedge.faults.omniscient.min_sum import MinSum
from byzedge.faults.omniscient.optimal_alie import OptimalAlie
from byzedge.faults.omniscient.optimal_ipm import OptimalIpm
from byzedge.faults.omniscient.plugin import PluginAttack, is_plugin_name, load_plugin
from byzedge.faults.omniscient.shift_back import ShiftBack

__all__ = [
    "OMNISCIENT_ATTACKS",
    "AggregateFn",
    "Alie",
    "CollusionContext",
    "ColludingAttack",
    "Ipm",
    "Mimic",
    "MinMax",
    "MinSum",
    "OmniscientAttack",
    "OptimalAlie",
    "OptimalIpm",
    "PluginAttack",
    "ShiftBack",
    "alie_z",
    "build_colluding_attack",
    "is_colluding_name",
    "is_plugin_name",
    "load_plugin",
]

OMNISCIENT_ATTACKS: Final[dict[str, type[OmniscientAttack]]] = {
    "alie": Alie,
    "ipm": Ipm,
    "min-max": MinMax,
    "min-sum": MinSum,
    "mimic": Mimic,
    "shift-back": ShiftBack,
    "optimal-alie": OptimalAlie,
    "optimal-ipm": OptimalIpm,
}


def is_colluding_name(name: str) -> bool:
    """Whether ``name`` is a registered colluding attack or a ``module:function`` plug-in."""
    return name in OMNISCIENT_ATTACKS or is_plugin_name(name)


def build_colluding_attack(name: str, params: Mapping[str, Any] | None = None) -> ColludingAttack:
    """Build the colluding attack ``name`` with ``params``.

    Parameters
    ----------
    name:
        A key of :data:`OMNISCIENT_ATTACKS`, or ``"module:function"``.
    params:
        Its hyperparameters (keyword arguments).

    Raises
    ------
    ValueError
        (:class:`~faults.errors.FaultConfigError`) for an unknown name, an unknown
        parameter, or a bad value.
    """
    options = dict(params or {})
    cls = OMNISCIENT_ATTACKS.get(name)
    if cls is not None:
        try:
            return cls(**options)
        except TypeError as exc:
            msg = f"{name}: {exc}"
            raise FaultConfigError(msg) from exc
    if is_plugin_name(name):
        return PluginAttack(name, options)
    msg = (
        f"unknown colluding attack {name!r}; known: {', '.join(OMNISCIENT_ATTACKS)} "
        "or 'module:function'"
    )
    raise FaultConfigError(msg)
