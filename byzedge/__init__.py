"""byzedge: Byzantine-robust federated learning for fleets of edge devices.

``byzedge.simulate`` (:func:`byzedge.api.simulate`) and ``byzedge.init``
(:func:`byzedge.api.init`) are the Python API. They are imported on first use, so
``import byzedge`` stays light (no torch, no simulator) on a device that only runs the
agent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "init", "simulate"]

if TYPE_CHECKING:
    from byzedge.api import init, simulate

_LAZY = frozenset({"init", "simulate"})


def __getattr__(name: str) -> Any:
    # PEP 562: the API module (and what it imports) loads on first access only.
    if name in _LAZY:
        from byzedge import api  # noqa: PLC0415

        return getattr(api, name)
    raise AttributeError(f"module 'byzedge' has no attribute {name!r}")
