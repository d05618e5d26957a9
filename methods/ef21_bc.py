# The docstrings write the papers' notation (gamma, alpha, sigma as Greek letters).
# ruff: noqa: RUF002
"""``byz-ef21-bc``: Byz-EF21 with a compressed broadcast (Rammal et al. AISTATS 2024; EF21-BC).

The uplink is Byz-EF21's (:mod:`byzedge.methods.ef21`). The server compresses what it
broadcasts as well (EF21-BC, Fatkhullin et al. arXiv 2110.03294 §3, with the mean replaced
by the robust rule over the mirrors; algorithms.md §3.2)::

    server   g̃_r = ARAgg(mirror_1, ..., mirror_n)
             b_r = C_M(g̃_r - g_{r-1})          C_M = top-k of ``downlink_sparsity``
                                                  (the first broadcast, g_0 = g̃_0, dense)
             g_r = g_{r-1} + b_r               (server and every device)
             x_{r+1} = x_r - γ g_r

A device that holds ``x_r`` and ``g_{r-1}`` rebuilds ``x_{r+1}`` from ``b_r`` alone
(:func:`follow_broadcast`, the same float32 operations as :meth:`ByzEF21BC.apply`, so the
rebuilt model is bit-identical and its SHA-256 matches the signed manifest's). Over MQTT
the coordinator publishes ``b_r`` as a sparse signed broadcast beside the dense model
(:mod:`byzedge.protocol.broadcast`, :mod:`byzedge.coordinator.downlink`); a device that
missed one fetches the dense pair ``(x, g)`` once and follows the broadcasts again
(:mod:`byzedge.edge_agent.downlink`).
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from byzedge.methods.base import OptionValue, RoundPlan, ServerState
from byzedge.methods.ef21 import ByzEF21, Vector
from byzedge.methods.options import check_probability, descend

__all__ = ["ByzEF21BC", "advance_estimator", "follow_broadcast", "top_k"]

# A kept coordinate costs a float32 value and a uint32 index on a sparse downlink.
_SPARSE_BYTES_PER_COORDINATE = 8


def top_k(vector: Vector, fraction: float) -> Vector:
    """Keep the ``ceil(fraction d)`` largest-magnitude coordinates of ``vector``, float32.

    The contractive compressor ``C_M`` (``||C(x) - x||² <= (1 - K/d)||x||²``).
    """
    dim = vector.shape[0]
    k = min(dim, max(1, math.ceil(fraction * dim)))
    out = np.zeros_like(vector, dtype=np.float32)
    if dim == 0:
        return out
    kept = np.argpartition(np.abs(vector), dim - k)[dim - k :]
    out[kept] = vector[kept]
    return out


def advance_estimator(g: Vector, broadcast: Vector) -> Vector:
    """``g_r = g_{r-1} + b_r`` in float32: the server's and every device's one update of ``g``.

    ``broadcast`` is dense, zeros off its support: adding the zeros too keeps the bits of
    ``g`` the server gets (``-0.0 + 0.0`` is ``+0.0``), so device and server agree exactly.
    """
    return (g + broadcast).astype(np.float32)


def follow_broadcast(
    params: Vector, g: Vector, broadcast: Vector, step_size: float, *, step: bool
) -> tuple[Vector, Vector]:
    """A device's rebuild of ``(x_{r+1}, g_r)`` from ``(x_r, g_{r-1})`` and ``b_r``.

    ``step`` is ``False`` for a round that did not move the model (no update arrived):
    then ``x`` stays and ``b_r`` is empty. Same operations, in the same order, as
    :meth:`ByzEF21BC.apply` and :func:`~byzedge.methods.options.descend`.
    """
    new_g = advance_estimator(g, broadcast)
    if not step:
        return params, new_g
    return (params - np.float32(step_size) * new_g).astype(np.float32), new_g


class ByzEF21BC(ByzEF21):
    """Byz-EF21-BC, both halves.

    Parameters
    ----------
    downlink_sparsity:
        Share of coordinates ``K_M/d`` the broadcast keeps (default 0.1).
    step_size, full_batch, batch_size, seed:
        As :class:`~byzedge.methods.ef21.ByzEF21`.

    Attributes
    ----------
    last_downlink_bytes:
        What the last broadcast would cost: ``8 K_M`` bytes (value and index per kept
        coordinate), ``4 d`` for the first, dense one; ``None`` before any.
    """

    name: ClassVar[str] = "byz-ef21-bc"
    compressed_broadcast: ClassVar[bool] = True
    option_names: ClassVar[tuple[str, ...]] = (*ByzEF21.option_names, "downlink_sparsity")

    def __init__(self, **options: OptionValue) -> None:
        downlink = options.pop("downlink_sparsity", 0.1)
        super().__init__(**options)
        self.downlink_sparsity = check_probability("downlink_sparsity", downlink)
        self.last_downlink_bytes: int | None = None

    def plan_options(self) -> dict[str, OptionValue]:
        """Devices' options and the broadcast's sparsity (they would decode it)."""
        return {**super().plan_options(), "downlink_sparsity": self.downlink_sparsity}

    def apply(
        self, plan: RoundPlan, params: Vector, aggregate: Vector, state: ServerState
    ) -> Vector:
        """``g_r = g_{r-1} + C_M(ARAgg - g_{r-1})``; ``x_{r+1} = x_r - γ g_r``."""
        target = np.asarray(aggregate, dtype=np.float32)
        if state.g is None:
            state.g = target.copy()
            state.broadcast = None  # the first g goes out dense
            self.last_downlink_bytes = 4 * target.shape[0]
        else:
            broadcast = top_k((target - state.g).astype(np.float32), self.downlink_sparsity)
            state.g = advance_estimator(state.g, broadcast)
            state.broadcast = broadcast
            self.last_downlink_bytes = _SPARSE_BYTES_PER_COORDINATE * int(
                np.count_nonzero(broadcast)
            )
        return descend(plan, params, state)
