"""The wire contract that devices and the coordinator share.

Depends on numpy, cryptography and msgpack only: no torch, no MQTT client.
"""

from __future__ import annotations

from protocol.chunking import DEFAULT_MAX_MESSAGE_BYTES, Reassembler, is_chunk, split_payload
from protocol.codecs import CODECS, Codec, build_codec
from protocol.envelope import Header, SealedEnvelope, open_envelope, seal
from protocol.errors import (
    ChunkError,
    CodecError,
    EnvelopeError,
    ProtocolError,
    SignatureError,
    TopicError,
)
from protocol.signing import SigningKey, VerifyKey, key_id_of

__all__ = [
    "CODECS",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "ChunkError",
    "Codec",
    "CodecError",
    "EnvelopeError",
    "Header",
    "ProtocolError",
    "Reassembler",
    "SealedEnvelope",
    "SignatureError",
    "SigningKey",
    "TopicError",
    "VerifyKey",
    "build_codec",
    "is_chunk",
    "key_id_of",
    "open_envelope",
    "seal",
    "split_payload",
]
