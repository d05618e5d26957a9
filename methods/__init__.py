"""Training methods, looked up by the permanent name operators write as ``algorithm``.

Each method is one class with a device half and a server half
(:class:`~byzedge.methods.base.TrainingMethod`), shared by the agent, the coordinator and
the simulator. The registry is an explicit dict: names travel in signed round plans, so
they never change.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from byzedge.methods.base import TrainingMethod

__all__ = ["METHODS", "build_method"]

METHODS: Final[Mapping[str, type[TrainingMethod]]] = MappingProxyType({})
"""Permanent name -> method class."""


def build_method(name: str, **options: Any) -> TrainingMethod:
    """Build method ``name`` with ``options``.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the known ones) or options it does not take.
    """
    try:
        method_type = METHODS[name]
    except KeyError:
        known = ", ".join(sorted(METHODS)) or "none"
        raise ValueError(f"unknown training method {name!r}; known: {known}") from None
    try:
        return method_type(**options)
    except TypeError as exc:
        raise ValueError(f"bad options for {name!r}: {exc}") from exc
