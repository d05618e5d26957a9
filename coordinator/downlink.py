"""The coordinator's side of the compressed downlink (Byz-EF21-BC over MQTT).

Each round the coordinator publishes the dense model (for monitors, ingest workers and
devices that follow it) and, for a method whose server step leaves a compressed broadcast
(:attr:`~byzedge.methods.base.TrainingMethod.compressed_broadcast`), two more retained
messages (:mod:`byzedge.protocol.broadcast`): the broadcast every following device reads,
and the dense ``(x, g)`` pair a device fetches only when it cannot follow.

The broadcast is sent as a ``delta`` only when applying the stored ``b`` to the pair of
the previous round, with the devices' own function
(:func:`~byzedge.methods.ef21_bc.follow_broadcast`), reproduces this round's pair bit for
bit. Anything else (the first rounds, a restart that lost the pair, an operator's reset, a
fallback rule that moved the model some other way) goes out as ``resync``: devices then
fetch the pair, which costs one dense download, never a wrong model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from byzedge.methods.base import ServerState
from byzedge.methods.ef21_bc import follow_broadcast
from byzedge.protocol import topics
from byzedge.protocol.broadcast import (
    BroadcastMode,
    Round,
    seal_model_broadcast,
    seal_model_resync,
    vector_digest,
)
from byzedge.protocol.signing import SigningKey

__all__ = ["DownlinkMessages", "compressed_downlink", "dense_downlink"]

_LOGGER = logging.getLogger(__name__)
# Header and envelope around the pair's 8 d bytes stay far below this.
_ENVELOPE_ALLOWANCE = 64 * 1024


@dataclass(frozen=True, slots=True)
class DownlinkMessages:
    """The retained messages of one round's downlink, beside the dense model."""

    mode: BroadcastMode
    messages: tuple[tuple[str, bytes], ...]


def _same(a: NDArray[np.float32], b: NDArray[np.float32]) -> bool:
    """Bitwise equality (``-0.0`` and ``+0.0`` differ, as in the digests)."""
    return a.shape == b.shape and bool(np.array_equal(a.view(np.uint32), b.view(np.uint32)))


def dense_downlink(key: SigningKey, meta: Round, dim: int) -> DownlinkMessages:
    """A ``dense`` broadcast: followers go back to the dense model (fleets without BC)."""
    envelope = seal_model_broadcast(key, meta, mode="dense", dim=dim, sha256="")
    return DownlinkMessages("dense", ((topics.broadcast_topic(meta.fleet), envelope.to_bytes()),))


def compressed_downlink(
    key: SigningKey,
    meta: Round,
    state: ServerState,
    *,
    step_size: float,
    max_message_bytes: int,
) -> DownlinkMessages:
    """The broadcast and the resync pair of the round whose model ``state`` last published.

    Parameters
    ----------
    key, meta:
        The coordinator's key and the round's manifest fields.
    state:
        The method's server state after ``plan`` (``current_*`` is this round's pair,
        ``previous_*`` the last round's, ``broadcast`` the ``b`` the last step added).
    step_size:
        ``gamma`` of the method.
    max_message_bytes:
        The broker's message limit: a pair that does not fit cannot be retained, so the
        fleet then follows the dense model.
    """
    x, g = state.current_params, state.current_g
    dim = 0 if x is None else int(x.shape[0])
    if x is None or g is None or meta.final:
        # No estimator yet (the first round), or training is over: the dense model.
        return dense_downlink(key, meta, dim)
    if 8 * dim + _ENVELOPE_ALLOWANCE > max_message_bytes:
        _LOGGER.warning(
            "model of %d parameters: its (x, g) pair cannot be retained under "
            "max_message_bytes = %d; devices follow the dense model",
            dim,
            max_message_bytes,
        )
        return dense_downlink(key, meta, dim)
    resync = seal_model_resync(key, meta, x, g)
    mode, broadcast, step = _broadcast_for(state, x, g, step_size)
    base_x, base_g = state.previous_params, state.previous_g
    envelope = seal_model_broadcast(
        key,
        meta,
        mode=mode,
        dim=dim,
        sha256=vector_digest(x),
        g_sha256=vector_digest(g),
        base_sha256=vector_digest(base_x) if base_x is not None else "",
        base_g_sha256=vector_digest(base_g) if base_g is not None else "",
        broadcast=broadcast,
        step=step,
        step_size=step_size,
    )
    return DownlinkMessages(
        mode,
        (
            (topics.broadcast_topic(meta.fleet), envelope.to_bytes()),
            (topics.resync_topic(meta.fleet), resync.to_bytes()),
        ),
    )


def _broadcast_for(
    state: ServerState, x: NDArray[np.float32], g: NDArray[np.float32], step_size: float
) -> tuple[BroadcastMode, NDArray[np.float32] | None, bool]:
    """``delta`` with ``b`` and the step flag when the last pair leads here exactly."""
    base_x, base_g = state.previous_params, state.previous_g
    if base_x is None or base_g is None:
        return "resync", None, False
    if _same(base_x, x) and _same(base_g, g):  # a round that moved nothing
        return "delta", np.zeros_like(x), False
    if state.broadcast is not None:
        rebuilt_x, rebuilt_g = follow_broadcast(
            base_x, base_g, state.broadcast, step_size, step=True
        )
        if _same(rebuilt_x, x) and _same(rebuilt_g, g):
            return "delta", state.broadcast, True
    return "resync", None, False
