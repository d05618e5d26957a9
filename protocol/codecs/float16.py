"""``float16``: half-precision coordinates, half the bytes of ``dense``.

Values beyond float16's range (65504) saturate instead of becoming infinite, so an honest
device never sends a non-finite number that the coordinator would have to reject.
"""

from __future__ import annotations

from typing import ClassVar, Final

import numpy as np
from numpy.typing import NDArray

from byzedge.protocol.codecs.base import CodecContext, CompressorClass, as_update_vector
from byzedge.protocol.errors import CodecError

__all__ = ["FLOAT16_MAX", "FLOAT16_REL_ERROR", "Float16Codec", "to_float16"]

FLOAT16_MAX: Final = float(np.finfo(np.float16).max)
# Round-to-nearest with a 10-bit mantissa: |fl(x) - x| <= 2**-11 |x| in the normal range.
FLOAT16_REL_ERROR: Final = 2.0**-11


def to_float16(values: NDArray[np.float32]) -> NDArray[np.float16]:
    """Cast to little-endian float16, saturating at +-65504 (NaN stays NaN)."""
    return np.clip(values, -FLOAT16_MAX, FLOAT16_MAX).astype("<f2")


class Float16Codec:
    """Lossy 2-byte encoding; relative error about 1e-3 per coordinate."""

    name: ClassVar[str] = "float16"
    # Near-lossless: deterministic rounding is biased by at most 2**-11 relative, which no
    # method's analysis notices; values beyond +-65504 saturate.
    compressor_class: ClassVar[CompressorClass] = "lossless"
    sparse: ClassVar[bool] = False
    seeded_support: ClassVar[bool] = False

    def encode(self, vector: NDArray[np.float32], *, context: CodecContext | None = None) -> bytes:
        """Return the vector's float16 bytes."""
        return to_float16(as_update_vector(vector)).tobytes()

    def omega(self, dim: int) -> float:
        """``2**-22``: the squared relative rounding error (normal range, no saturation)."""
        return FLOAT16_REL_ERROR**2

    def alpha(self, dim: int) -> float:
        """``1 - 2**-22``: ``||C(x) - x||^2 <= 2**-22 ||x||^2`` in the normal range."""
        return 1.0 - FLOAT16_REL_ERROR**2

    def decode(
        self, data: bytes, dim: int, *, context: CodecContext | None = None
    ) -> NDArray[np.float32]:
        """Read exactly ``dim`` float16 values as float32."""
        if len(data) != 2 * dim:
            msg = f"float16 body of {len(data)} bytes, expected {2 * dim} for dim {dim}"
            raise CodecError(msg)
        return np.frombuffer(data, dtype="<f2").astype(np.float32)
