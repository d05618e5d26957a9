"""The exception tree of the wire contract.

::

    ProtocolError
    ├── EnvelopeError      malformed or truncated framing, bad header fields
    ├── SignatureError     the signature does not verify, or the algorithm is unknown
    ├── ChunkError         a chunk is inconsistent, too large, or reassembly limits are hit
    ├── CodecError         a body cannot be decoded into a vector of the right shape
    └── TopicError         a topic or identifier that the contract does not allow

Receivers turn every one of these into a rejection with a reason; none of them ever
escapes a daemon's loop.
"""

from __future__ import annotations

__all__ = [
    "ChunkError",
    "CodecError",
    "EnvelopeError",
    "ProtocolError",
    "SignatureError",
    "TopicError",
]


class ProtocolError(Exception):
    """Base class of every error raised while reading or writing the wire format."""


class EnvelopeError(ProtocolError):
    """The framing of a message is malformed, truncated or inconsistent."""


class SignatureError(ProtocolError):
    """A signature does not verify, or names an algorithm we do not accept."""


class ChunkError(ProtocolError):
    """A chunk is inconsistent with its siblings or exceeds a reassembly limit."""


class CodecError(ProtocolError):
    """An update body cannot be decoded into a float32 vector of the right size.

    Decoding does not judge the values: a well-formed body may carry NaN or infinities,
    which the receiver rejects as non-finite.
    """


class TopicError(ProtocolError):
    """A topic or identifier falls outside what the contract allows."""
