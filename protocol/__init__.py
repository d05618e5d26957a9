"""The wire contract that devices and the coordinator share.

Depends on numpy, cryptography and msgpack only: no torch, no MQTT client.
"""

from __future__ import annotations

from byzedge.protocol.chunking import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Reassembler,
    is_chunk,
    split_payload,
)
from byzedge.protocol.codecs import (
    CODECS,
    Codec,
    CodecContext,
    SupportMismatchError,
    build_codec,
)
from byzedge.protocol.envelope import Header, SealedEnvelope, open_envelope, seal
from byzedge.protocol.errors import (
    ChunkError,
    CodecError,
    EnvelopeError,
    ProtocolError,
    SignatureError,
    TopicError,
)
from byzedge.protocol.signing import SigningKey, VerifyKey, key_id_of

__all__ = [
    "CODECS",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "ChunkError",
    "Codec",
    "CodecContext",
    "CodecError",
    "EnvelopeError",
    "Header",
    "ProtocolError",
    "Reassembler",
    "SealedEnvelope",
    "SignatureError",
    "SigningKey",
    "SupportMismatchError",
    "TopicError",
    "VerifyKey",
    "build_codec",
    "is_chunk",
    "key_id_of",
    "open_envelope",
    "seal",
    "split_payload",
]
