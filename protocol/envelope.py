"""The signed envelope: what every update and every global model travels in.

Wire form (after the 4-byte magic ``BZE1``) is a msgpack map::

    {"v": 1, "alg": "ed25519", "kid": <key id>, "hdr": <header bytes>,
     "body": <body bytes>, "sig": <64-byte signature>}

``hdr`` is itself a msgpack map (:class:`Header`), kept as the exact bytes that were signed,
so the receiver never needs to re-serialise anything to verify. The signature covers::

    b"byzedge/envelope/v1" || 0x00 || hdr || SHA-256(body)

which binds the body to its header (fleet, sender, round, base version, nonce, counter,
expiry, codec) without hashing the body twice. Nothing here ever unpickles or evaluates
received bytes, and every length is bounded before it is read.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar

import msgpack

from byzedge.protocol.errors import EnvelopeError, SignatureError
from byzedge.protocol.signing import ALGORITHM, SigningKey, VerifyKey

__all__ = [
    "ENVELOPE_MAGIC",
    "ENVELOPE_VERSION",
    "Header",
    "MessageKind",
    "SealedEnvelope",
    "open_envelope",
    "seal",
]

ENVELOPE_MAGIC: Final = b"BZE1"
ENVELOPE_VERSION: Final = 1
_DOMAIN: Final = b"byzedge/envelope/v1\x00"
_MAX_HEADER_BYTES: Final = 64 * 1024

MessageKind = Literal["update", "model", "receipt", "context"]
_KINDS: Final = frozenset({"update", "model", "receipt", "context"})
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Header:
    """What the signature vouches for, besides the body's digest.

    Attributes
    ----------
    kind:
        ``"update"`` (device to coordinator), ``"model"`` (coordinator to devices), or, with
        sharded ingest, ``"receipt"`` (the leader's receipts, to devices and ingest workers)
        and ``"context"`` (the leader's round context, to ingest workers). Every receiver
        checks the kind it expects, so one kind never passes for another.
    fleet:
        The fleet the message belongs to.
    sender:
        The device id, or the coordinator's name.
    round:
        The round this message belongs to.
    base_version:
        For an update, the global model version it was trained from; for a model, its own
        version.
    nonce:
        16 random bytes; a receiver refuses a nonce it has seen (replay).
    counter:
        A per-sender monotonic counter; a receiver refuses one that does not increase.
    created_ms, expires_ms:
        Unix milliseconds; a receiver refuses an expired message.
    codec:
        Registry name of the codec that encoded the body.
    dim:
        Length of the decoded float32 vector.
    meta:
        Kind-specific extras (model name, cohort, body digest...), msgpack-friendly.
    """

    kind: MessageKind
    fleet: str
    sender: str
    round: int
    base_version: int
    codec: str
    dim: int
    counter: int
    nonce: bytes = field(default_factory=lambda: os.urandom(16))
    created_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    expires_ms: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """Serialise the header as the msgpack map that gets signed."""
        return _pack(
            {
                "kind": self.kind,
                "fleet": self.fleet,
                "sender": self.sender,
                "round": self.round,
                "base_version": self.base_version,
                "codec": self.codec,
                "dim": self.dim,
                "counter": self.counter,
                "nonce": self.nonce,
                "created_ms": self.created_ms,
                "expires_ms": self.expires_ms,
                "meta": self.meta,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Header:
        """Parse and type-check header bytes; raise :class:`EnvelopeError` on any defect."""
        raw = _unpack_map(data, "header")
        try:
            header = cls(
                kind=_field(raw, "kind", str),  # type: ignore[arg-type]
                fleet=_field(raw, "fleet", str),
                sender=_field(raw, "sender", str),
                round=_field(raw, "round", int),
                base_version=_field(raw, "base_version", int),
                codec=_field(raw, "codec", str),
                dim=_field(raw, "dim", int),
                counter=_field(raw, "counter", int),
                nonce=_field(raw, "nonce", bytes),
                created_ms=_field(raw, "created_ms", int),
                expires_ms=_field(raw, "expires_ms", int),
                meta=_field(raw, "meta", dict),
            )
        except TypeError as exc:  # pragma: no cover - _field checks every type first
            raise EnvelopeError(str(exc)) from exc
        if header.kind not in _KINDS:
            msg = f"unknown message kind {header.kind!r}"
            raise EnvelopeError(msg)
        if len(header.nonce) != 16:
            msg = f"nonce must be 16 bytes, got {len(header.nonce)}"
            raise EnvelopeError(msg)
        if header.round < 0 or header.dim < 0 or header.counter < 0:
            msg = "round, dim and counter must be non-negative"
            raise EnvelopeError(msg)
        return header

    def is_expired(self, now_ms: int) -> bool:
        """Whether the message has passed its expiry (0 means it never expires)."""
        return self.expires_ms != 0 and now_ms > self.expires_ms


@dataclass(frozen=True, slots=True)
class SealedEnvelope:
    """A parsed envelope whose signature has not necessarily been checked yet.

    Use :meth:`verify` with the sender's enrolled key before trusting anything in it.
    """

    header: Header
    header_bytes: bytes
    body: bytes
    key_id: str
    signature: bytes

    def signed_message(self) -> bytes:
        """The exact bytes the sender signed."""
        return _DOMAIN + self.header_bytes + hashlib.sha256(self.body).digest()

    def verify(self, key: VerifyKey) -> None:
        """Raise :class:`SignatureError` unless the envelope is signed by ``key``."""
        if key.key_id != self.key_id:
            msg = f"envelope names key {self.key_id}, expected {key.key_id}"
            raise SignatureError(msg)
        key.verify(self.signature, self.signed_message())

    def to_bytes(self) -> bytes:
        """Serialise to wire bytes (magic + msgpack)."""
        return ENVELOPE_MAGIC + _pack(
            {
                "v": ENVELOPE_VERSION,
                "alg": ALGORITHM,
                "kid": self.key_id,
                "hdr": self.header_bytes,
                "body": self.body,
                "sig": self.signature,
            }
        )


def seal(header: Header, body: bytes, key: SigningKey) -> SealedEnvelope:
    """Sign ``header`` and ``body`` with ``key`` and return the envelope."""
    header_bytes = header.to_bytes()
    message = _DOMAIN + header_bytes + hashlib.sha256(body).digest()
    return SealedEnvelope(
        header=header,
        header_bytes=header_bytes,
        body=body,
        key_id=key.key_id,
        signature=key.sign(message),
    )


def open_envelope(payload: bytes, max_bytes: int) -> SealedEnvelope:
    """Parse wire bytes into a :class:`SealedEnvelope` without trusting them.

    Parameters
    ----------
    payload:
        The reassembled message bytes.
    max_bytes:
        Refuse anything larger before looking inside.

    Raises
    ------
    EnvelopeError
        For an oversize, truncated or malformed payload.
    SignatureError
        For an algorithm other than Ed25519.
    """
    if len(payload) > max_bytes:
        msg = f"envelope of {len(payload)} bytes exceeds the limit of {max_bytes}"
        raise EnvelopeError(msg)
    if not payload.startswith(ENVELOPE_MAGIC):
        msg = "not a byzedge envelope (bad magic)"
        raise EnvelopeError(msg)
    raw = _unpack_map(payload[len(ENVELOPE_MAGIC) :], "envelope", max_bin=max_bytes)
    version = _field(raw, "v", int)
    if version != ENVELOPE_VERSION:
        msg = f"unsupported envelope version {version}"
        raise EnvelopeError(msg)
    algorithm = _field(raw, "alg", str)
    if algorithm != ALGORITHM:
        msg = f"unsupported signature algorithm {algorithm!r}"
        raise SignatureError(msg)
    header_bytes = _field(raw, "hdr", bytes)
    if len(header_bytes) > _MAX_HEADER_BYTES:
        msg = f"header of {len(header_bytes)} bytes is too large"
        raise EnvelopeError(msg)
    signature = _field(raw, "sig", bytes)
    if len(signature) != 64:
        msg = f"signature must be 64 bytes, got {len(signature)}"
        raise EnvelopeError(msg)
    return SealedEnvelope(
        header=Header.from_bytes(header_bytes),
        header_bytes=header_bytes,
        body=_field(raw, "body", bytes),
        key_id=_field(raw, "kid", str),
        signature=signature,
    )


def _pack(value: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def _unpack_map(data: bytes, what: str, max_bin: int = _MAX_HEADER_BYTES) -> dict[str, Any]:
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_bin_len=max_bin,
            max_str_len=_MAX_HEADER_BYTES,
            max_array_len=100_000,
            max_map_len=1_000,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        msg = f"malformed {what}: {exc}"
        raise EnvelopeError(msg) from exc
    if not isinstance(value, dict):
        msg = f"malformed {what}: expected a map, got {type(value).__name__}"
        raise EnvelopeError(msg)
    return value


def _field(raw: dict[str, Any], name: str, kind: type[_T]) -> _T:
    if name not in raw:
        msg = f"missing field {name!r}"
        raise EnvelopeError(msg)
    value = raw[name]
    # bool is an int subclass; a boolean where a number belongs is a malformed message.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        msg = f"field {name!r} must be {kind.__name__}, got {type(value).__name__}"
        raise EnvelopeError(msg)
    return value
