"""``dense``: raw little-endian float32, 4 bytes per coordinate, lossless."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from byzedge.protocol.codecs.base import CodecContext, CompressorClass, as_update_vector
from byzedge.protocol.errors import CodecError

__all__ = ["DenseCodec"]


class DenseCodec:
    """Lossless float32 encoding; the baseline that compression ratios are measured against."""

    name: ClassVar[str] = "dense"
    compressor_class: ClassVar[CompressorClass] = "lossless"
    sparse: ClassVar[bool] = False
    seeded_support: ClassVar[bool] = False

    def encode(self, vector: NDArray[np.float32], *, context: CodecContext | None = None) -> bytes:
        """Return the vector's raw little-endian float32 bytes."""
        return as_update_vector(vector).tobytes()

    def omega(self, dim: int) -> float:
        """``0``: ``C(x) = x``."""
        return 0.0

    def alpha(self, dim: int) -> float:
        """``1``: ``C(x) = x``."""
        return 1.0

    def decode(
        self, data: bytes, dim: int, *, context: CodecContext | None = None
    ) -> NDArray[np.float32]:
        """Read exactly ``dim`` float32 values."""
        if len(data) != 4 * dim:
            msg = f"dense body of {len(data)} bytes, expected {4 * dim} for dim {dim}"
            raise CodecError(msg)
        return np.frombuffer(data, dtype="<f4").astype(np.float32)
