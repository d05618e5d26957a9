"""``sybil``: extra updates under identities the coordinator never enrolled."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from byzedge.edge_agent.seams import OutgoingMessage, RoundContext
from byzedge.faults._validate import check_non_negative_int
from byzedge.faults.attacks.base import WireAttack
from byzedge.faults.errors import FaultConfigError
from byzedge.protocol.envelope import open_envelope, seal
from byzedge.protocol.errors import ProtocolError
from byzedge.protocol.signing import SigningKey

__all__ = ["Sybil", "sybil_id"]

_KEYS: Final = 2  # generator purpose of the sybil keys (0 and 1 are the coin and draws)
_MAX_ID: Final = 64


def sybil_id(device_id: str, index: int) -> str:
    """Return the id of sybil ``index`` of ``device_id``: ``f"{device_id}-sybil-{index}"``.

    The device part is shortened so that the id stays a valid 64-character topic level.
    """
    suffix = f"-sybil-{index}"
    return device_id[: _MAX_ID - len(suffix)] + suffix


class Sybil(WireAttack):
    """Sybil attack (Douceur, IPTPS 2002): one device speaks as many.

    In an active round the device publishes its own update and, for ``k = 0 .. count-1``,
    the same header and body re-sealed under a fresh Ed25519 key as device
    :func:`sybil_id` ``(device, k)`` on that identity's own update topic.

    Parameters
    ----------
    count:
        Number of sybil identities (``>= 1``, default 3).
    start_round, probability, seed:
        See :class:`~faults.attacks.base.WireAttack`. The sybil keys depend on
        ``(seed, k)`` only, so an identity keeps its key for life.

    Notes
    -----
    Every sybil message is well formed and correctly signed, for a key the coordinator
    does not know: its ingest must refuse each as ``unknown-device``. If accepted, sybils
    would multiply the attacker's vote (enrolment is the defence; robust aggregation
    assumes a bounded Byzantine fraction). A payload that is not an envelope yields no
    sybils.
    """

    name: ClassVar[str] = "sybil"

    def __init__(
        self,
        *,
        count: int = 3,
        start_round: int = 0,
        probability: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.count = check_non_negative_int("count", count)
        if self.count < 1:
            msg = f"count must be >= 1, got {count!r}"
            raise FaultConfigError(msg)
        super().__init__(start_round=start_round, probability=probability, seed=seed)
        self._keys = [self._key(index) for index in range(self.count)]

    def _key(self, index: int) -> SigningKey:
        secret = self.schedule.generator(_KEYS, index).bytes(32)
        return SigningKey(Ed25519PrivateKey.from_private_bytes(secret))

    def key(self, index: int) -> SigningKey:
        """Return the signing key of sybil ``index``."""
        return self._keys[index]

    def _abuse(self, message: OutgoingMessage, context: RoundContext) -> list[OutgoingMessage]:
        try:
            envelope = open_envelope(message.payload, len(message.payload))
        except ProtocolError:
            return [message]
        rng = self.schedule.draws(context.round)
        out = [message]
        for index, key in enumerate(self._keys):
            identity = sybil_id(message.topic_device, index)
            header = dataclasses.replace(envelope.header, sender=identity, nonce=rng.bytes(16))
            sealed = seal(header, envelope.body, key)
            out.append(OutgoingMessage(identity, sealed.to_bytes()))
        return out
