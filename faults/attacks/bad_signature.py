"""``bad-signature``: a well-formed envelope whose signature does not verify."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from byzedge.edge_agent.seams import OutgoingMessage, RoundContext
from byzedge.faults.attacks.base import WireAttack
from byzedge.faults.errors import FaultConfigError
from byzedge.protocol.envelope import open_envelope
from byzedge.protocol.errors import ProtocolError
from byzedge.protocol.signing import SigningKey

__all__ = ["BadSignature"]

SignatureMode = Literal["flip", "wrong-key"]
_MODES: tuple[SignatureMode, ...] = ("flip", "wrong-key")


class BadSignature(WireAttack):
    """Protocol abuse: keep the envelope, break its Ed25519 signature.

    ``mode="flip"`` inverts one random bit of one random byte of the 64-byte signature;
    ``mode="wrong-key"`` re-signs the same header and body with a random key while still
    naming the device's key id (an impostor that guessed the message format).

    Parameters
    ----------
    mode:
        ``"flip"`` (default) or ``"wrong-key"``.
    start_round, probability, seed:
        See :class:`~faults.attacks.base.WireAttack`; the flipped bit and the impostor key
        of round ``k`` are drawn from ``(seed, k)``.

    Notes
    -----
    The coordinator's ingest must refuse it as ``bad-signature``. A payload that is not an
    envelope (an earlier wire stage garbled it) passes through unchanged.
    """

    name: ClassVar[str] = "bad-signature"

    def __init__(
        self,
        *,
        mode: SignatureMode = "flip",
        start_round: int = 0,
        probability: float = 1.0,
        seed: int = 0,
    ) -> None:
        if mode not in _MODES:
            msg = f"mode must be one of {', '.join(_MODES)}, got {mode!r}"
            raise FaultConfigError(msg)
        self.mode: SignatureMode = mode
        super().__init__(start_round=start_round, probability=probability, seed=seed)

    def _abuse(self, message: OutgoingMessage, context: RoundContext) -> list[OutgoingMessage]:
        try:
            envelope = open_envelope(message.payload, len(message.payload))
        except ProtocolError:
            return [message]
        rng = self.schedule.draws(context.round)
        if self.mode == "flip":
            signature = bytearray(envelope.signature)
            signature[int(rng.integers(len(signature)))] ^= 1 << int(rng.integers(8))
            forged = bytes(signature)
        else:
            impostor = SigningKey(Ed25519PrivateKey.from_private_bytes(rng.bytes(32)))
            forged = impostor.sign(envelope.signed_message())
        broken = dataclasses.replace(envelope, signature=forged)
        return [OutgoingMessage(message.topic_device, broken.to_bytes())]
