"""A user's own colluding attack, named ``"module:function"`` in a fault plan.

The function must have the colluding-attack signature of :mod:`byzedge.faults.omniscient.base`::

    def my_attack(
        honest: NDArray[np.float32],      # (h, d) honest updates of the cohort
        num_byzantine: int,               # f, rows to return
        context: CollusionContext,        # round, models, cohort size, rng, aggregate...
        *,
        strength: float = 1.0,            # optional hyperparameters, from the plan's params
    ) -> NDArray[np.float32]:             # (f, d)
        ...

and live in an importable module (on ``sys.path``)::

    [[target]]
    fraction = 0.2
    faults = [{ name = "mypkg.attacks:my_attack", params = { strength = 2.0 } }]

The module is imported when the plan is loaded (it runs code: load only plans you wrote).
Its parameters are checked against the signature then, and its output's shape and
finiteness of type on every call.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from byzedge.faults.errors import FaultConfigError
from byzedge.faults.omniscient.base import CollusionContext, check_inputs

__all__ = ["PluginAttack", "is_plugin_name", "load_plugin"]

_PLUGIN: Final = re.compile(
    r"^(?P<module>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)"
    r":(?P<attr>[A-Za-z_][A-Za-z0-9_]*)$"
)


def is_plugin_name(name: str) -> bool:
    """Whether ``name`` has the ``module:function`` form of a plug-in."""
    return _PLUGIN.fullmatch(name) is not None


def load_plugin(name: str) -> Callable[..., Any]:
    """Import and return the function named ``"module:function"``.

    Raises
    ------
    ValueError
        (:class:`~faults.errors.FaultConfigError`) when the name is malformed, the module
        cannot be imported, it has no such attribute, or the attribute is not callable.
    """
    match = _PLUGIN.fullmatch(name)
    if match is None:
        msg = f"attack plug-in must be written 'module:function', got {name!r}"
        raise FaultConfigError(msg)
    module_name, attr = match["module"], match["attr"]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        msg = f"attack plug-in {name!r}: cannot import {module_name!r} ({exc})"
        raise FaultConfigError(msg) from exc
    function = getattr(module, attr, None)
    if function is None:
        msg = f"attack plug-in {name!r}: module {module_name!r} has no {attr!r}"
        raise FaultConfigError(msg)
    if not callable(function):
        msg = f"attack plug-in {name!r}: {attr!r} is not callable"
        raise FaultConfigError(msg)
    return function  # type: ignore[no-any-return]


class PluginAttack:
    """A user's ``module:function`` attack with its parameters bound, checked on each call.

    Parameters
    ----------
    name:
        ``"module:function"``.
    params:
        Keyword arguments passed on every call after ``(honest, num_byzantine, context)``.

    Raises
    ------
    ValueError
        When the function cannot be loaded or does not accept three positional arguments
        plus ``params`` (the message quotes its signature).
    """

    def __init__(self, name: str, params: Mapping[str, Any] | None = None) -> None:
        self.name = name
        self.params = dict(params or {})
        self.function = load_plugin(name)
        try:
            signature = inspect.signature(self.function)
        except (TypeError, ValueError):  # builtins without a signature: trust them
            return
        try:
            signature.bind(None, 0, None, **self.params)
        except TypeError as exc:
            msg = (
                f"attack plug-in {name!r}{signature} cannot be called as "
                f"(honest, num_byzantine, context, **{self.params!r}): {exc}"
            )
            raise FaultConfigError(msg) from exc

    def __call__(
        self, honest: NDArray[np.float32], num_byzantine: int, context: CollusionContext
    ) -> NDArray[np.float32]:
        """Call the plug-in; return its output as float32 ``(num_byzantine, d)``.

        Raises
        ------
        ValueError
            When the plug-in returns another shape.
        """
        matrix = check_inputs(self.name, honest, num_byzantine, context)
        forged = np.asarray(
            self.function(matrix, int(num_byzantine), context, **self.params), dtype=np.float32
        )
        expected = (int(num_byzantine), matrix.shape[1])
        if forged.shape != expected:
            msg = f"attack plug-in {self.name!r} returned shape {forged.shape}, expected {expected}"
            raise ValueError(msg)
        return forged

    def __repr__(self) -> str:
        return f"PluginAttack({self.name!r}, {self.params!r})"
