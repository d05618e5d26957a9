"""The seams through which the fault injector (and tests) reach into a real agent.

An agent reads its local data through a :class:`SensorSource`, turns each trained
parameter delta into the vector it publishes through a chain of :class:`UpdateStage`
callables, and after sealing passes the signed bytes through a chain of :class:`WireStage`
callables that decide which :class:`OutgoingMessage` objects actually go out. The fault
injector wraps these three seams (sensor faults wrap the source, device-local attacks add
update stages or wrap the training data, protocol-level abuse adds wire stages); the agent
itself never asks whether it is compromised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "LocalData",
    "OutgoingMessage",
    "RoundContext",
    "SensorSource",
    "UpdateStage",
    "WireStage",
]


@dataclass(frozen=True, slots=True)
class LocalData:
    """One read of a device's local training data.

    Attributes
    ----------
    features:
        float32 array of shape ``(m, 64)`` for the digits task (flattened 8x8 readings,
        scaled to [0, 1]). Faulty sensors may put NaN here; the trainer drops such rows.
    labels:
        int64 array of shape ``(m,)`` with class indices in ``[0, num_classes)``.
    """

    features: NDArray[np.float32]
    labels: NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class RoundContext:
    """What an update stage may know about the round it is shaping.

    Attributes
    ----------
    device_id:
        The agent's enrolled identity.
    round:
        The round number of the global model being trained.
    global_params:
        The global model's flat float32 parameter vector ``x_k`` (read-only).
    rng:
        A generator owned by the stage's caller, seeded per device.
    """

    device_id: str
    round: int
    global_params: NDArray[np.float32]
    rng: np.random.Generator


class SensorSource(Protocol):
    """Where an agent reads its local training data, once per round."""

    def read(self, round_number: int) -> LocalData:
        """Return the data available to the device for ``round_number``."""
        ...


class UpdateStage(Protocol):
    """One step of the update pipeline: takes the update vector, returns the one to send.

    The honest pipeline is empty (the trained delta is sent as is, then compressed and
    signed). Compromised devices get stages that rewrite the delta (sign flip, noise...).
    """

    def __call__(self, update: NDArray[np.float32], context: RoundContext) -> NDArray[np.float32]:
        """Return the (possibly rewritten) float32 update of the same shape."""
        ...


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One message an agent is about to publish on an update topic.

    Attributes
    ----------
    topic_device:
        The device id whose update topic the message goes to
        (``byzedge/{fleet}/update/{topic_device}``); the agent's own id for an honest update.
    payload:
        The wire bytes (a sealed envelope for an honest update), before MQTT chunking.
    """

    topic_device: str
    payload: bytes


class WireStage(Protocol):
    """One step after sealing: takes a message about to be sent, returns what is sent instead.

    The honest chain is empty (the sealed update is published as is). Protocol-level attacks
    return rewritten messages (garbage bytes, a broken signature) or extra ones (sybil
    identities); an empty list sends nothing.
    """

    def __call__(self, message: OutgoingMessage, context: RoundContext) -> list[OutgoingMessage]:
        """Return the messages to publish in place of ``message``, in order."""
        ...
