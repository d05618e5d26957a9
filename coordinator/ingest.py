"""Ingest: from an MQTT message to an accepted update or a rejection with a reason.

The checks run in the order of DESIGN.md's data flow, cheapest and most fundamental first,
and no check ever trusts a field that an earlier one has not vouched for::

    size -> chunk reassembly -> envelope parse -> topic/fleet -> enrolled sender
         -> signature -> replay (nonce, counter) -> round, model version, expiry
         -> duplicate -> codec -> shape -> finite values

Every failure becomes a :class:`Rejected` with a permanent :class:`RejectReason`; nothing a
sender can put in a message makes :meth:`Ingest.submit` raise.

An exact copy of an update accepted in the open round or the one before (same device, same
nonce) is :class:`Redelivered`, neither accepted again nor rejected: agents re-send their
update after a reconnect (the broker may have lost it) and QoS 1 may deliver twice, so a
copy is the network's doing, not the device's, and changes nothing.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
from numpy.typing import NDArray

from byzedge.coordinator.enrolment import Enrolment, EnrolmentStoreError
from byzedge.protocol.chunking import Reassembler
from byzedge.protocol.codecs import CODECS, CodecContext, SupportMismatchError
from byzedge.protocol.envelope import Header, open_envelope
from byzedge.protocol.errors import (
    ChunkError,
    CodecError,
    EnvelopeError,
    SignatureError,
    TopicError,
)
from byzedge.protocol.topics import parse_device_topic

__all__ = [
    "Accepted",
    "Ingest",
    "IngestOutcome",
    "Redelivered",
    "RejectReason",
    "Rejected",
    "RoundWindow",
    "decode_update",
]

_LOGGER = logging.getLogger(__name__)
# Nonces are remembered this long; older messages fail the counter or round checks anyway.
_NONCE_MEMORY = 100_000


class RejectReason(StrEnum):
    """Why an update was refused. The values are permanent: they appear in summaries."""

    OVERSIZE = "oversize"
    BAD_CHUNK = "bad-chunk"
    MALFORMED = "malformed"
    WRONG_TOPIC = "wrong-topic"
    UNKNOWN_DEVICE = "unknown-device"
    BAD_SIGNATURE = "bad-signature"
    REPLAY = "replay"
    WRONG_ROUND = "wrong-round"
    STALE_MODEL = "stale-model"
    EXPIRED = "expired"
    NOT_IN_COHORT = "not-in-cohort"
    DUPLICATE = "duplicate"
    UNKNOWN_CODEC = "unknown-codec"
    BAD_BODY = "bad-body"
    WRONG_SHAPE = "wrong-shape"
    NON_FINITE = "non-finite"
    RANDK_SUPPORT_MISMATCH = "randk-support-mismatch"


# Reasons that only the holder of the device's key can cause: they count against its
# reputation. A replay or a late message may be a third party's doing or the network's.
ATTRIBUTABLE = frozenset(
    {
        RejectReason.UNKNOWN_CODEC,
        RejectReason.BAD_BODY,
        RejectReason.WRONG_SHAPE,
        RejectReason.NON_FINITE,
        RejectReason.RANDK_SUPPORT_MISMATCH,
    }
)


@dataclass(frozen=True, slots=True)
class RoundWindow:
    """What the coordinator expects in the round now open."""

    round: int
    model_version: int
    dim: int
    cohort: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class Accepted:
    """An authenticated, fresh, well-formed update."""

    device_id: str
    header: Header
    update: NDArray[np.float32]
    wire_bytes: int
    body_bytes: int
    payload: bytes = b""
    """The reassembled envelope bytes, kept so the coordinator can journal the round."""


@dataclass(frozen=True, slots=True)
class Redelivered:
    """A copy of an update already accepted (a re-send or a QoS 1 duplicate): ignored."""

    device_id: str
    round: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """A refused message: the reason, a human detail, and who it claimed to come from."""

    reason: RejectReason
    detail: str
    device_id: str | None
    attributable: bool = False


IngestOutcome = Accepted | Rejected | Redelivered


class Ingest:
    """Verifies updates against enrolled keys and the open round.

    Parameters
    ----------
    fleet:
        The fleet served; topics of other fleets are refused.
    devices:
        Enrolled device keys.
    max_message_bytes:
        Largest single MQTT message a well-behaved device sends.
    max_update_bytes:
        Largest reassembled update.
    update_ttl_s:
        Largest accepted age of an update.
    clock:
        Wall clock in seconds (injectable for tests).
    """

    def __init__(
        self,
        fleet: str,
        devices: Enrolment,
        *,
        max_message_bytes: int,
        max_update_bytes: int,
        update_ttl_s: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._fleet = fleet
        self._devices = devices
        self._max_message_bytes = max_message_bytes
        self._max_update_bytes = max_update_bytes
        self._update_ttl_ms = int(update_ttl_s * 1000)
        self._clock = clock
        self._reassembler = Reassembler(max_update_bytes, max_pending_per_source=2)
        self._seen_nonces: OrderedDict[bytes, None] = OrderedDict()
        self._last_counter: dict[str, int] = {}
        # Nonce of each device's accepted update in the open round and in the one before,
        # to recognise copies (Redelivered) before the replay check would reject them.
        self._accepted_this_round: dict[str, bytes] = {}
        self._accepted_last_round: dict[str, bytes] = {}
        self._round: int | None = None

    @property
    def devices(self) -> Enrolment:
        """The enrolled devices whose signatures are accepted."""
        return self._devices

    @devices.setter
    def devices(self, registry: Enrolment) -> None:
        # Replay protection (nonces, per-device counters) is kept: a device enrolled again
        # under the same id cannot replay what it sent before.
        self._devices = registry

    def submit(self, topic: str, frame: bytes, window: RoundWindow) -> IngestOutcome | None:
        """Check one MQTT message against ``window``.

        Returns
        -------
        Accepted, Rejected or None
            ``None`` while a chunked update is still incomplete.
        """
        self._open_round(window.round)
        try:
            topic_device = parse_device_topic(topic, self._fleet, "update")
        except TopicError as exc:
            return Rejected(RejectReason.WRONG_TOPIC, str(exc), None)
        if len(frame) > self._max_message_bytes:
            detail = f"message of {len(frame)} bytes exceeds {self._max_message_bytes}"
            return Rejected(RejectReason.OVERSIZE, detail, topic_device)
        try:
            payload = self._reassembler.feed(topic_device, frame)
        except ChunkError as exc:
            reason = RejectReason.OVERSIZE if "exceeds" in str(exc) else RejectReason.BAD_CHUNK
            return Rejected(reason, str(exc), topic_device)
        if payload is None:
            return None
        return self._check_payload(topic_device, payload, window)

    def submit_payload(self, device_id: str, payload: bytes, window: RoundWindow) -> IngestOutcome:
        """Check one reassembled update (the coordinator's journal replays these).

        Runs every check after reassembly, as if ``payload`` had arrived on
        ``device_id``'s update topic.
        """
        self._open_round(window.round)
        if len(payload) > self._max_update_bytes:
            detail = f"update of {len(payload)} bytes exceeds {self._max_update_bytes}"
            return Rejected(RejectReason.OVERSIZE, detail, device_id)
        return self._check_payload(device_id, payload, window)

    def _open_round(self, round_number: int) -> None:
        if round_number != self._round:
            if self._round is not None and round_number == self._round + 1:
                self._accepted_last_round = self._accepted_this_round
            else:
                self._accepted_last_round = {}
            self._accepted_this_round = {}
            self._round = round_number

    def _check_payload(
        self, topic_device: str, payload: bytes, window: RoundWindow
    ) -> IngestOutcome:
        try:
            envelope = open_envelope(payload, self._max_update_bytes)
        except EnvelopeError as exc:
            return Rejected(RejectReason.MALFORMED, str(exc), topic_device)
        except SignatureError as exc:
            return Rejected(RejectReason.BAD_SIGNATURE, str(exc), topic_device)
        header = envelope.header
        if header.kind != "update" or header.fleet != self._fleet:
            detail = f"{header.kind} message for fleet {header.fleet!r} on an update topic"
            return Rejected(RejectReason.WRONG_TOPIC, detail, topic_device)
        if header.sender != topic_device:
            detail = f"sender {header.sender!r} published on {topic_device!r}'s topic"
            return Rejected(RejectReason.WRONG_TOPIC, detail, topic_device)
        try:
            key = self._devices.get(header.sender)
        except EnrolmentStoreError as exc:
            # The enrolment server is down (after one reconnect): the update cannot be
            # checked, so it is refused as from an unknown device, which does not count
            # against the device's reputation; the device sends again next round.
            detail = f"device {header.sender!r} not looked up: {exc}"
            return Rejected(RejectReason.UNKNOWN_DEVICE, detail, topic_device)
        if key is None:
            detail = f"device {header.sender!r} is not enrolled"
            return Rejected(RejectReason.UNKNOWN_DEVICE, detail, topic_device)
        try:
            envelope.verify(key)
        except SignatureError as exc:
            return Rejected(RejectReason.BAD_SIGNATURE, str(exc), topic_device)
        # From here on the sender is authenticated.
        device = header.sender
        replay = self._check_fresh(device, header)
        if replay is not None:
            return replay
        rejection = self._check_window(device, header, window)
        if rejection is not None:
            # Not remembered: an update early for its round (an ingest worker that has not
            # yet seen the round open) or refused by the window comes again as itself,
            # judged again, never as a replay of itself.
            return rejection
        self._remember(device, header)
        update = decode_update(device, header, envelope.body, window.dim)
        if isinstance(update, Rejected):
            return update
        self._accepted_this_round[device] = header.nonce
        return Accepted(
            device_id=device,
            header=header,
            update=update,
            wire_bytes=len(payload),
            body_bytes=len(envelope.body),
            payload=payload,
        )

    def _check_fresh(self, device: str, header: Header) -> Rejected | Redelivered | None:
        if header.nonce in (
            self._accepted_this_round.get(device),
            self._accepted_last_round.get(device),
        ):
            return Redelivered(device, header.round)
        if header.nonce in self._seen_nonces:
            return Rejected(RejectReason.REPLAY, "nonce already seen", device)
        last = self._last_counter.get(device, -1)
        if header.counter <= last:
            detail = f"counter {header.counter} not above {last}"
            return Rejected(RejectReason.REPLAY, detail, device)
        return None

    def _remember(self, device: str, header: Header) -> None:
        """Burn the message's nonce and counter.

        Only for an authenticated message its round's window takes, so neither a forged
        message nor one that came too early can burn a device's nonces or counters.
        """
        self._seen_nonces[header.nonce] = None
        while len(self._seen_nonces) > _NONCE_MEMORY:
            self._seen_nonces.popitem(last=False)
        self._last_counter[device] = header.counter

    def _check_window(self, device: str, header: Header, window: RoundWindow) -> Rejected | None:
        now_ms = int(self._clock() * 1000)
        if header.round != window.round:
            detail = f"update for round {header.round}, round {window.round} is open"
            return Rejected(RejectReason.WRONG_ROUND, detail, device)
        if header.base_version != window.model_version:
            detail = f"trained from model {header.base_version}, current is {window.model_version}"
            return Rejected(RejectReason.STALE_MODEL, detail, device)
        if header.is_expired(now_ms) or now_ms - header.created_ms > self._update_ttl_ms:
            return Rejected(RejectReason.EXPIRED, "update expired", device)
        if window.cohort is not None and device not in window.cohort:
            detail = f"{device} was not sampled for round {window.round}"
            return Rejected(RejectReason.NOT_IN_COHORT, detail, device)
        if device in self._accepted_this_round:
            detail = f"{device} already has an accepted update this round"
            return Rejected(RejectReason.DUPLICATE, detail, device)
        return None

    def state_dict(self) -> dict[str, Any]:
        """The replay-protection state that must survive a restart."""
        return {"last_counter": dict(self._last_counter)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        counters = state.get("last_counter", {})
        self._last_counter = {str(k): int(v) for k, v in counters.items()}


def decode_update(
    device: str, header: Header, body: bytes, dim: int
) -> NDArray[np.float32] | Rejected:
    """Codec, shape and finite checks of an authenticated, fresh update's body.

    Ingest's last step, after the signature, replay and window checks; the leader of
    sharded ingest decodes the envelopes its workers accepted with it.
    """
    codec_type = CODECS.get(header.codec)
    if codec_type is None:
        detail = f"unknown codec {header.codec!r}"
        return Rejected(RejectReason.UNKNOWN_CODEC, detail, device, attributable=True)
    if header.dim != dim:
        detail = f"update of dim {header.dim}, the model has {dim}"
        return Rejected(RejectReason.WRONG_SHAPE, detail, device, attributable=True)
    # rand-k's support comes from the signed fleet, round and sender, never the body.
    codec_context = CodecContext(header.fleet, header.round, header.sender)
    try:
        update = codec_type().decode(body, header.dim, context=codec_context)
    except SupportMismatchError as exc:
        reason = RejectReason.RANDK_SUPPORT_MISMATCH
        return Rejected(reason, str(exc), device, attributable=True)
    except CodecError as exc:
        return Rejected(RejectReason.BAD_BODY, str(exc), device, attributable=True)
    if not np.isfinite(update).all():
        bad = int(np.count_nonzero(~np.isfinite(update)))
        detail = f"{bad} non-finite values"
        return Rejected(RejectReason.NON_FINITE, detail, device, attributable=True)
    return update
