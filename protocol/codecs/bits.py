"""Fixed-width bit fields, packed least significant bit first, for the compact codecs."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from byzedge.protocol.errors import CodecError

__all__ = ["field_bytes", "pack_fields", "unpack_fields"]


def field_bytes(count: int, width: int) -> int:
    """Bytes taken by ``count`` fields of ``width`` bits: ``ceil(count * width / 8)``."""
    return (count * width + 7) // 8


def pack_fields(values: NDArray[np.integer], width: int) -> bytes:
    """Pack non-negative integers below ``2**width`` into ``width`` bits each.

    Field ``i`` occupies bits ``i*width .. i*width + width - 1`` of the stream, bit 0 of a
    byte first; the padding bits of the last byte are zero.
    """
    if width == 0 or values.shape[0] == 0:
        return b""
    shifts = np.arange(width, dtype=np.uint64)
    bits = (values.astype(np.uint64)[:, None] >> shifts) & np.uint64(1)
    return np.packbits(bits.astype(np.uint8).ravel(), bitorder="little").tobytes()


def unpack_fields(data: bytes, count: int, width: int, what: str) -> NDArray[np.int64]:
    """Read ``count`` fields of ``width`` bits from exactly :func:`field_bytes` bytes.

    Raises
    ------
    CodecError
        If ``data`` has another length or a padding bit is set (a non-canonical body).
    """
    if len(data) != field_bytes(count, width):
        msg = f"{what}: {len(data)} bytes for {count} fields of {width} bits"
        raise CodecError(msg)
    if width == 0 or count == 0:
        return np.zeros(count, dtype=np.int64)
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    if bits[count * width :].any():
        msg = f"{what}: padding bits are not zero"
        raise CodecError(msg)
    fields = bits[: count * width].reshape(count, width).astype(np.int64)
    weights = np.left_shift(np.int64(1), np.arange(width, dtype=np.int64))
    values: NDArray[np.int64] = fields @ weights
    return values
