"""``natural``: natural compression, 9 bits per coordinate, unbiased.

Horváth, Ho, Horváth, Sahu, Canini, Richtárik, "Natural Compression for Distributed Deep
Learning" (2019, arXiv 1905.10988): each value is rounded stochastically to one of the two
powers of two around it::

    C(x)_j = sign(x_j) 2^e      with probability (2^{e+1} - |x_j|) / 2^e
             sign(x_j) 2^{e+1}  otherwise,               2^e <= |x_j| < 2^{e+1}

so ``E[C(x)] = x`` and ``omega = 1/8``. On float32 this is: drop the mantissa ``m`` and add
one to the biased exponent with probability ``m / 2^23`` (subnormals round to 0 or
``2^-126`` by the same rule). Only the sign and the 8-bit exponent remain.

Body (little-endian), ``d + ceil(d/8)`` bytes::

    u8 exponents[d]   float32's biased exponent: 0 is zero, 255 is infinity
    signs             d bits, bit 0 of a byte first, padding zero

The one biased case: a value above ``2^127`` rounds down to ``2^127`` rather than to
infinity (no sane update gets there). NaN is sent as infinity, which the receiver rejects.
"""

from __future__ import annotations

from typing import ClassVar, Final

import numpy as np
from numpy.typing import NDArray

from byzedge.protocol.codecs.base import CodecContext, CompressorClass, as_update_vector
from byzedge.protocol.codecs.bits import field_bytes, pack_fields, unpack_fields
from byzedge.protocol.codecs.stochastic import RoundingSource
from byzedge.protocol.errors import CodecError

__all__ = ["NaturalCodec"]

_MANTISSA_BITS: Final = 23
_MAX_FINITE_EXPONENT: Final = 254
_INFINITE_EXPONENT: Final = 255


class NaturalCodec:
    """Unbiased rounding to powers of two (``omega = 1/8``), 9 bits per coordinate.

    Parameters
    ----------
    seed:
        Seed of the stochastic rounding (see
        :class:`~byzedge.protocol.codecs.stochastic.RoundingSource`).
    """

    name: ClassVar[str] = "natural"
    compressor_class: ClassVar[CompressorClass] = "unbiased"
    sparse: ClassVar[bool] = False
    seeded_support: ClassVar[bool] = False

    def __init__(self, *, seed: int | None = None) -> None:
        self._rounding = RoundingSource(seed)

    def omega(self, dim: int) -> float:
        """``1/8`` (Horváth et al. 2019, Theorem 1)."""
        return 1.0 / 8.0

    def alpha(self, dim: int) -> float | None:
        """``None``: unbiased, not contractive."""
        return None

    def encode(self, vector: NDArray[np.float32], *, context: CodecContext | None = None) -> bytes:
        """Round each coordinate to a power of two and pack exponents and signs."""
        bits = as_update_vector(vector).view("<u4")
        signs = bits >> np.uint32(31)
        exponents = ((bits >> np.uint32(_MANTISSA_BITS)) & np.uint32(0xFF)).astype(np.int64)
        mantissas = (bits & np.uint32((1 << _MANTISSA_BITS) - 1)).astype(np.int64)
        finite = exponents < _INFINITE_EXPONENT
        # Up with probability m / 2^23: an integer draw keeps that probability exact.
        rng = self._rounding(self.name, context)
        up = rng.integers(0, 1 << _MANTISSA_BITS, size=bits.shape[0]) < mantissas
        rounded = np.where(
            finite, np.minimum(exponents + (up & finite), _MAX_FINITE_EXPONENT), exponents
        )
        return rounded.astype(np.uint8).tobytes() + pack_fields(signs, 1)

    def decode(
        self, data: bytes, dim: int, *, context: CodecContext | None = None
    ) -> NDArray[np.float32]:
        """Rebuild ``sign * 2^(E - 127)`` per coordinate (0 for E = 0, inf for E = 255)."""
        expected = dim + field_bytes(dim, 1)
        if len(data) != expected:
            msg = f"natural body of {len(data)} bytes, expected {expected} for dim {dim}"
            raise CodecError(msg)
        exponents = np.frombuffer(data, dtype=np.uint8, count=dim).astype(np.uint32)
        signs = unpack_fields(data[dim:], dim, 1, "natural signs").astype(np.uint32)
        bits = (signs << np.uint32(31)) | (exponents << np.uint32(_MANTISSA_BITS))
        return bits.astype("<u4").view("<f4").astype(np.float32)
