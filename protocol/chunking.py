"""Splitting payloads over ``max_message_bytes`` into chunks, and putting them back.

Brokers cap a message's size (AWS IoT Core at 128 KiB) and paho does not honour the
broker's maximum packet size, so we enforce the limit ourselves: a payload that fits goes
out as is; a larger one becomes chunk frames (magic ``BZC1`` + msgpack)::

    {"id": 16 bytes, "i": index, "n": count, "size": total bytes,
     "sha256": digest of the whole payload, "data": this chunk's bytes}

Chunks are not signed themselves: the reassembled payload is an envelope whose signature
is checked as usual, and the digest lets the receiver drop a corrupted reassembly before it
decodes anything. The :class:`Reassembler` bounds everything an attacker could inflate:
the announced total size, the number of pending messages per source and their age.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack

from byzedge.protocol.errors import ChunkError

__all__ = [
    "CHUNK_MAGIC",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "Reassembler",
    "is_chunk",
    "split_payload",
]

CHUNK_MAGIC: Final = b"BZC1"
DEFAULT_MAX_MESSAGE_BYTES: Final = 128 * 1024
# Room for the chunk frame's own fields (id, index, digest...) inside the size limit.
_FRAME_OVERHEAD: Final = 128


def is_chunk(frame: bytes) -> bool:
    """Whether ``frame`` is a chunk rather than a whole payload."""
    return frame.startswith(CHUNK_MAGIC)


def split_payload(
    payload: bytes, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> list[bytes]:
    """Return the MQTT messages that carry ``payload``, each at most ``max_message_bytes``.

    A payload that fits is returned alone and unchanged, unless it starts with
    :data:`CHUNK_MAGIC` (it is then chunked, so that the receiver cannot mistake it).
    """
    if max_message_bytes <= _FRAME_OVERHEAD * 2:
        msg = f"max_message_bytes={max_message_bytes} is too small to chunk into"
        raise ValueError(msg)
    # A payload that starts like a chunk frame is chunked anyway, or the receiver would
    # take it for one.
    if len(payload) <= max_message_bytes and not is_chunk(payload):
        return [payload]
    step = max_message_bytes - _FRAME_OVERHEAD
    count = math.ceil(len(payload) / step)
    message_id = os.urandom(16)
    digest = hashlib.sha256(payload).digest()
    return [
        CHUNK_MAGIC
        + msgpack.packb(
            {
                "id": message_id,
                "i": index,
                "n": count,
                "size": len(payload),
                "sha256": digest,
                "data": payload[index * step : (index + 1) * step],
            },
            use_bin_type=True,
        )
        for index in range(count)
    ]


@dataclass(slots=True)
class _Pending:
    count: int
    size: int
    digest: bytes
    started: float
    parts: dict[int, bytes] = field(default_factory=dict)
    received_bytes: int = 0


class Reassembler:
    """Collects chunk frames per source and returns whole payloads.

    Parameters
    ----------
    max_payload_bytes:
        Largest reassembled payload accepted; announced sizes above it are refused at once.
    max_pending_per_source:
        How many incomplete messages one source may have open; the oldest is dropped.
    timeout_s:
        Incomplete messages older than this are dropped.
    clock:
        Monotonic clock, injectable for tests.
    """

    def __init__(
        self,
        max_payload_bytes: int,
        *,
        max_pending_per_source: int = 2,
        timeout_s: float = 60.0,
        clock: Any = time.monotonic,
    ) -> None:
        if max_pending_per_source < 1:
            msg = f"max_pending_per_source must be at least 1, got {max_pending_per_source}"
            raise ValueError(msg)
        self._max_payload_bytes = max_payload_bytes
        self._max_pending = max_pending_per_source
        self._timeout_s = timeout_s
        self._clock = clock
        self._pending: dict[str, OrderedDict[bytes, _Pending]] = {}

    def feed(self, source: str, frame: bytes) -> bytes | None:
        """Accept one MQTT message from ``source``.

        Returns
        -------
        bytes or None
            The whole payload when ``frame`` is unchunked or completes a message;
            ``None`` while chunks are still missing.

        Raises
        ------
        ChunkError
            For a malformed chunk, one inconsistent with its siblings, a size over the
            limit, or a reassembly whose digest does not match.
        """
        if not is_chunk(frame):
            if len(frame) > self._max_payload_bytes:
                msg = f"payload of {len(frame)} bytes exceeds {self._max_payload_bytes}"
                raise ChunkError(msg)
            return frame
        chunk = _parse_chunk(frame)
        self._expire()
        pending_for_source = self._pending.setdefault(source, OrderedDict())
        message_id = chunk["id"]
        pending = pending_for_source.get(message_id)
        if pending is None:
            if chunk["size"] > self._max_payload_bytes:
                msg = f"announced size {chunk['size']} exceeds {self._max_payload_bytes}"
                raise ChunkError(msg)
            pending = _Pending(chunk["n"], chunk["size"], chunk["sha256"], self._clock())
            pending_for_source[message_id] = pending
            while len(pending_for_source) > self._max_pending:
                pending_for_source.popitem(last=False)
        elif (chunk["n"], chunk["size"], chunk["sha256"]) != (
            pending.count,
            pending.size,
            pending.digest,
        ):
            del pending_for_source[message_id]
            msg = "chunk disagrees with earlier chunks of the same message"
            raise ChunkError(msg)
        index = chunk["i"]
        if index not in pending.parts:
            pending.parts[index] = chunk["data"]
            pending.received_bytes += len(chunk["data"])
        if pending.received_bytes > pending.size:
            del pending_for_source[message_id]
            msg = "chunks carry more bytes than announced"
            raise ChunkError(msg)
        if len(pending.parts) < pending.count:
            return None
        del pending_for_source[message_id]
        payload = b"".join(pending.parts[i] for i in range(pending.count))
        if len(payload) != pending.size or hashlib.sha256(payload).digest() != pending.digest:
            msg = "reassembled payload does not match its announced size and digest"
            raise ChunkError(msg)
        return payload

    def pending_count(self) -> int:
        """Number of incomplete messages currently held."""
        return sum(len(p) for p in self._pending.values())

    def _expire(self) -> None:
        deadline = self._clock() - self._timeout_s
        for source in list(self._pending):
            pending = self._pending[source]
            for message_id in [m for m, p in pending.items() if p.started < deadline]:
                del pending[message_id]
            if not pending:
                del self._pending[source]


def _parse_chunk(frame: bytes) -> dict[str, Any]:
    try:
        raw = msgpack.unpackb(
            frame[len(CHUNK_MAGIC) :],
            raw=False,
            strict_map_key=True,
            max_map_len=16,
            max_array_len=0,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        msg = f"malformed chunk: {exc}"
        raise ChunkError(msg) from exc
    if not isinstance(raw, dict):
        msg = "malformed chunk: not a map"
        raise ChunkError(msg)
    expected = {"id": bytes, "i": int, "n": int, "size": int, "sha256": bytes, "data": bytes}
    for name, kind in expected.items():
        value = raw.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            msg = f"malformed chunk: field {name!r} missing or not {kind.__name__}"
            raise ChunkError(msg)
    if not 0 <= raw["i"] < raw["n"] or raw["n"] > 100_000 or raw["size"] < 0:
        msg = f"malformed chunk: index {raw['i']} of {raw['n']}"
        raise ChunkError(msg)
    if len(raw["id"]) != 16 or len(raw["sha256"]) != 32:
        msg = "malformed chunk: bad id or digest length"
        raise ChunkError(msg)
    return raw
