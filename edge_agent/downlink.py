"""The device's side of the compressed downlink: follow Byz-EF21-BC's broadcast.

A device starts on the dense model topic. When a model's plan names a method that
broadcasts compressed (:attr:`~byzedge.methods.base.TrainingMethod.compressed_broadcast`),
the follower fetches the round's dense ``(x, g)`` pair once (it subscribes to the resync
topic, whose retained message the broker hands over, then unsubscribes), leaves the dense
model topic and follows the broadcast topic: each broadcast's sparse ``b`` turns the pair
it holds into the next round's (:func:`~byzedge.methods.ef21_bc.follow_broadcast`), checked
against the signed digests before anything trains on it. A broadcast it cannot follow (it
missed one, it restarted, or the coordinator says ``resync``) makes it fetch the pair
again; a ``dense`` broadcast sends it back to the dense model topic.

The pair is kept in memory only: a restarted agent starts on the dense topic again, which
costs it one dense download.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from byzedge.methods import METHODS
from byzedge.methods.ef21_bc import follow_broadcast
from byzedge.protocol import topics
from byzedge.protocol.broadcast import (
    ModelBroadcast,
    open_model_broadcast,
    open_model_resync,
    vector_digest,
)
from byzedge.protocol.errors import ProtocolError
from byzedge.protocol.manifest import GlobalModel
from byzedge.protocol.signing import VerifyKey

__all__ = ["DownlinkFollower", "Subscriptions", "follows_compressed"]

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Subscriptions:
    """What the follower may change on the agent's broker connection."""

    subscribe: Callable[[str], None]
    unsubscribe: Callable[[str], None]


def follows_compressed(model: GlobalModel) -> bool:
    """Whether ``model``'s plan names a method with a compressed broadcast."""
    plan = model.plan
    algorithm = plan.get("algorithm") if plan is not None else None
    method = METHODS.get(algorithm) if isinstance(algorithm, str) else None
    return method is not None and method.compressed_broadcast


class DownlinkFollower:
    """Turns the downlink's messages into global models, following broadcasts when asked.

    Parameters
    ----------
    fleet, coordinator_key, max_bytes:
        What every model message is checked against.
    dim:
        The device's model size; a pair of another size is refused.
    subscriptions:
        The agent's subscribe and unsubscribe.

    Attributes
    ----------
    mode:
        ``"dense"`` (on the dense model topic) or ``"compressed"`` (following broadcasts).
    refused:
        Messages refused (forged, malformed, or a rebuild that does not match its digest).
    last_refusal:
        Why the last one was refused.
    resyncs:
        Times the pair was fetched.
    downlink_bytes:
        Bytes of the model messages this follower has used (dense, broadcast and pair).
    """

    def __init__(
        self,
        fleet: str,
        coordinator_key: VerifyKey,
        *,
        max_bytes: int,
        dim: int,
        subscriptions: Subscriptions,
    ) -> None:
        self._fleet = fleet
        self._key = coordinator_key
        self._max_bytes = max_bytes
        self._dim = dim
        self._subscriptions = subscriptions
        self.mode: Literal["dense", "compressed"] = "dense"
        self._pair: tuple[NDArray[np.float32], NDArray[np.float32]] | None = None
        self._pair_digests: tuple[str, str] = ("", "")
        self._fetching = False
        # A broadcast that came while the pair was being fetched: it may follow from it.
        self._pending: ModelBroadcast | None = None
        self.refused = 0
        self.last_refusal: str | None = None
        self.resyncs = 0
        self.downlink_bytes = 0
        self.model_topic = topics.model_topic(fleet)
        self.broadcast_topic = topics.broadcast_topic(fleet)
        self.resync_topic = topics.resync_topic(fleet)

    def take(self, topic: str, payload: bytes) -> GlobalModel | bytes | None:
        """Take one downlink message.

        Returns the dense model's bytes (opened by the agent as before), a model rebuilt
        from the broadcast or the pair, or ``None`` (nothing to train on yet).
        """
        if topic == self.broadcast_topic:
            return self._take_broadcast(payload)
        if topic == self.resync_topic:
            return self._take_resync(payload)
        if self.mode == "dense":
            self.downlink_bytes += len(payload)
            return payload
        return None  # a dense model still queued from before the switch

    def saw_dense_model(self, model: GlobalModel) -> None:
        """After the agent accepted a dense model: switch to the broadcast if it says so."""
        if self.mode == "dense" and follows_compressed(model) and not model.final:
            self._fetch_pair("the fleet broadcasts compressed")

    # -- messages ----------------------------------------------------------------------

    def _take_broadcast(self, payload: bytes) -> GlobalModel | None:
        try:
            broadcast = open_model_broadcast(
                payload, self._key, fleet=self._fleet, max_bytes=self._max_bytes
            )
        except ProtocolError as exc:
            self._refuse(f"broadcast refused: {exc}")
            return None
        self.downlink_bytes += len(payload)
        if broadcast.mode == "dense":
            self._follow_dense()
            return None
        if self.mode != "compressed":
            return None
        if self._fetching:
            if broadcast.mode == "delta":
                self._pending = broadcast
            return None
        if self._pair_digests == (broadcast.sha256, broadcast.g_sha256):
            return None  # the retained copy of the round we hold
        if broadcast.mode == "resync":
            self._fetch_pair("the coordinator asked for a resync")
            return None
        return self._follow(broadcast)

    def _follow(self, broadcast: ModelBroadcast) -> GlobalModel | None:
        if (
            self._pair is None
            or broadcast.broadcast is None
            or self._pair_digests != (broadcast.base_sha256, broadcast.base_g_sha256)
        ):
            self._fetch_pair(f"round {broadcast.header.round}'s broadcast follows another pair")
            return None
        x, g = follow_broadcast(
            self._pair[0],
            self._pair[1],
            broadcast.broadcast,
            broadcast.step_size,
            step=broadcast.step,
        )
        try:
            if vector_digest(g) != broadcast.g_sha256:
                raise ProtocolError("rebuilt g does not match the broadcast's signed SHA-256")
            model = broadcast.model(x)
        except ProtocolError as exc:
            self._refuse(str(exc))
            self._fetch_pair("a rebuild did not match its digest")
            return None
        self._hold(x, g, broadcast.sha256, broadcast.g_sha256)
        return model

    def _take_resync(self, payload: bytes) -> GlobalModel | None:
        if not self._fetching:
            return None  # a pair we did not ask for (an unsubscribe still in flight)
        try:
            resync = open_model_resync(
                payload, self._key, fleet=self._fleet, max_bytes=self._max_bytes
            )
        except ProtocolError as exc:
            self._refuse(f"resync pair refused: {exc}")
            return None
        if resync.model.params.shape != (self._dim,):
            self._refuse(f"resync pair of dim {resync.model.params.size}, expected {self._dim}")
            return None
        self.downlink_bytes += len(payload)
        self._fetching = False
        self._subscriptions.unsubscribe(self.resync_topic)
        self._hold(resync.model.params, resync.g, resync.model.sha256, resync.g_sha256)
        if self.mode == "dense":
            self.mode = "compressed"
            self._subscriptions.subscribe(self.broadcast_topic)
            self._subscriptions.unsubscribe(self.model_topic)
        pending, self._pending = self._pending, None
        if pending is not None and self._pair_digests == (
            pending.base_sha256,
            pending.base_g_sha256,
        ):
            return self._follow(pending) or resync.model
        return resync.model

    # -- transitions -------------------------------------------------------------------

    def _hold(self, x: NDArray[np.float32], g: NDArray[np.float32], x_sha: str, g_sha: str) -> None:
        self._pair = (x, g)
        self._pair_digests = (x_sha, g_sha)

    def _fetch_pair(self, why: str) -> None:
        _LOGGER.info("fetching the dense (x, g) pair: %s", why)
        self.resyncs += 1
        self._fetching = True
        self._subscriptions.subscribe(self.resync_topic)

    def _follow_dense(self) -> None:
        if self.mode == "dense" and not self._fetching:
            return
        _LOGGER.info("the fleet broadcasts dense again: following the dense model")
        self.mode = "dense"
        self._fetching = False
        self._pending = None
        self._pair = None
        self._pair_digests = ("", "")
        self._subscriptions.unsubscribe(self.resync_topic)
        self._subscriptions.subscribe(self.model_topic)
        self._subscriptions.unsubscribe(self.broadcast_topic)

    def _refuse(self, reason: str) -> None:
        self.refused += 1
        self.last_refusal = reason
        _LOGGER.warning("%s", reason)
