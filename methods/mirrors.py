"""The server's copies ("mirrors") of the devices' estimators, kept in step over a lossy network.

Byz-EF21, Byz-DASHA-PAGE and Byz-Clip21-SGD2M aggregate a per-device estimator that
only the device computes; the server holds a mirror of each and folds every message into
it (Rammal et al. AISTATS 2024, §3-4; algorithms.md §3.1 and §4):
``mirror_i <- mirror_i + scale * message_i``. A mirror is right only if it saw exactly the
messages the device committed, so every message names the round of the previous one
(``base_round``) and:

* ``reset`` (the device's estimator, whole): the mirror becomes it;
* ``difference`` onto a mirror last updated in ``base_round``: applied;
* anything else (no mirror, another base round, the device listed for resync, a kind the
  method does not send, a result that is not finite): dropped with a reason, and the device
  is listed in ``state.resync`` so the next plan asks it for a reset.

A device that sends nothing leaves its mirror as it is, which is exactly EF21's rule for a
skipped round (``c_i = 0``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

from byzedge.methods.base import MethodMessage, RoundPlan, ServerState

__all__ = ["fold_messages", "mirror_rows"]

Vector = NDArray[np.float32]


def _drop(state: ServerState, dropped: dict[str, str], device: str, reason: str) -> None:
    dropped[device] = reason
    state.resync.add(device)


def fold_messages(
    plan: RoundPlan,
    messages: Mapping[str, tuple[MethodMessage, Vector]],
    state: ServerState,
    *,
    scale: float = 1.0,
    zero_start: bool = False,
) -> dict[str, str]:
    """Fold the round's messages into ``state.mirrors``; return the dropped ones.

    Parameters
    ----------
    plan:
        The round's plan (its round becomes each updated mirror's round).
    messages:
        ``device -> (message header, decoded vector)``.
    state:
        The server state, updated in place.
    scale:
        ``mirror += scale * vector`` for a difference (Clip21-SGD2M's ``β̂``; 1 otherwise).
    zero_start:
        A device without a mirror whose message has no base round starts from a zero
        mirror (Clip21-SGD2M initialises every estimator to 0); otherwise it must reset.

    Returns
    -------
    dict
        ``device -> reason`` for every message not applied (each such device is listed
        for resync).
    """
    dropped: dict[str, str] = {}
    for device in sorted(messages):
        message, vector = messages[device]
        if message.kind == "reset":
            state.mirrors[device] = np.array(vector, dtype=np.float32, copy=True)
            state.mirror_rounds[device] = plan.round
            state.resync.discard(device)
            continue
        if message.kind != "difference":
            _drop(state, dropped, device, f"{plan.algorithm} sends no {message.kind!r} messages")
            continue
        if device in plan.resync or device in state.resync:
            # Asked for a reset: its estimator and the mirror may already differ.
            _drop(state, dropped, device, "a reset was requested")
            continue
        mirror = state.mirrors.get(device)
        if mirror is None:
            if not (zero_start and message.base_round is None):
                _drop(state, dropped, device, "no mirror for a difference")
                continue
            mirror = np.zeros_like(vector, dtype=np.float32)
        elif state.mirror_rounds.get(device) != message.base_round:
            _drop(
                state,
                dropped,
                device,
                f"base round {message.base_round} but the mirror is of round "
                f"{state.mirror_rounds.get(device)}",
            )
            continue
        updated = (mirror + np.float32(scale) * vector).astype(np.float32)
        if not np.isfinite(updated).all():
            _drop(state, dropped, device, "the mirror would not be finite")
            continue
        state.mirrors[device] = updated
        state.mirror_rounds[device] = plan.round
    return dropped


def mirror_rows(state: ServerState) -> tuple[list[str], list[Vector]]:
    """Every device's mirror (sorted by device): what the robust rule aggregates.

    Devices that did not send this round count with the mirror they have (EF21's skipped
    round), and so does a device listed for resync until its reset arrives: its mirror
    lags by the dropped messages only, and leaving it out would shrink the honest share
    the robust rule relies on.
    """
    ids = sorted(state.mirrors)
    return ids, [state.mirrors[d] for d in ids]
