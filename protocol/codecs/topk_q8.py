"""``top-k-q8``: TopK with Rice-coded index gaps and 8-bit stochastic values.

The compact wire form of TopK (the ``top-k`` body spends 2 or 4 bytes per index and 2 per
value). Indices are sorted, so they are sent as gaps ``g_0 = i_0``,
``g_j = i_j - i_{j-1} - 1``, which at sparsity ``K/d`` are roughly geometric with mean
``d/K``; a Golomb-Rice code with parameter ``r`` (Golomb 1966; Rice 1979) spends
``1 + r + floor(g / 2^r)`` bits on a gap, about ``log2(d/K) + 1.5`` bits at the best ``r``
(9 bits at 1%). Values use the unbiased 8-bit code of
:mod:`~byzedge.protocol.codecs.stochastic`. At 1% that is about 2.1 bytes per kept
coordinate, against 4 (``top-k`` with u16 indices) or 6 (u32 indices).

``C(x) = Q8(T_K(x))`` is contractive: ``Q8`` is unbiased with variance at most
``omega_q ||T_K(x)||^2``, so ``E||C(x) - x||^2 = E||Q8(T x) - T x||^2 + ||x||^2 - ||T x||^2
<= ||x||^2 - (1 - omega_q) ||T x||^2 <= (1 - (1 - omega_q) K/d) ||x||^2``, hence
``alpha = (1 - omega_q) K/d`` with ``omega_q = min(K/(4·127²), √K/127)``.

Body (little-endian)::

    u32 K
    u8  r                   Rice parameter, 0..31, chosen by the sender to minimise the size
    f4  lo, f4 hi, u8 [K]   the 8-bit values, in index order
    remainders              K fields of r bits (g mod 2^r), LSB first, zero padding
    quotients               per gap, floor(g / 2^r) one-bits then a zero-bit, LSB first;
                            the last byte is padded with one-bits

The two streams are kept apart so both ends work on whole arrays: the quotients are the
runs between the zero-bits of the last stream.
"""

from __future__ import annotations

from typing import ClassVar, Final

import numpy as np
from numpy.typing import NDArray

from byzedge.protocol.codecs.base import (
    CodecContext,
    CompressorClass,
    as_update_vector,
    check_sparsity,
    kept_count,
)
from byzedge.protocol.codecs.bits import field_bytes, pack_fields, unpack_fields
from byzedge.protocol.codecs.stochastic import (
    Q8_HEADER_BYTES,
    RoundingSource,
    q8_decode,
    q8_encode,
    q8_omega,
)
from byzedge.protocol.codecs.topk import TopKCodec
from byzedge.protocol.errors import CodecError

__all__ = ["TopKQ8Codec", "rice_parameter"]

_PREFIX_BYTES: Final = 5
_MAX_RICE: Final = 31


def rice_parameter(gaps: NDArray[np.int64]) -> int:
    """The ``r`` in ``0..31`` that minimises ``sum(1 + r + (g >> r))`` over ``gaps``."""
    if gaps.shape[0] == 0:
        return 0
    costs = [int(np.sum(gaps >> r)) + r * gaps.shape[0] for r in range(_MAX_RICE + 1)]
    return int(np.argmin(costs))


def _quotient_stream(quotients: NDArray[np.int64]) -> bytes:
    total = int(quotients.sum()) + quotients.shape[0]
    bits = np.ones(field_bytes(total, 1) * 8, dtype=np.uint8)
    bits[np.cumsum(quotients + 1) - 1] = 0
    return np.packbits(bits, bitorder="little").tobytes()


def _read_quotients(data: bytes, k: int) -> NDArray[np.int64]:
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    zeros = np.flatnonzero(bits == 0)
    if zeros.shape[0] != k:
        msg = f"top-k-q8 gap stream ends {zeros.shape[0]} gaps, expected {k}"
        raise CodecError(msg)
    # Canonical: the stream stops in the byte of the last gap's terminating zero.
    if len(data) != (int(zeros[-1]) // 8 + 1 if k else 0):
        msg = "top-k-q8 gap stream has trailing bytes"
        raise CodecError(msg)
    return np.diff(zeros, prepend=-1).astype(np.int64) - 1


class TopKQ8Codec:
    """TopK, compact: Rice-coded index gaps and 8-bit stochastic values.

    Parameters
    ----------
    sparsity:
        Fraction of coordinates kept, in ``(0, 1]`` (config key ``sparsity``).
    seed:
        Seed of the values' stochastic rounding (see
        :class:`~byzedge.protocol.codecs.stochastic.RoundingSource`).
    """

    name: ClassVar[str] = "top-k-q8"
    compressor_class: ClassVar[CompressorClass] = "contractive"
    sparse: ClassVar[bool] = True
    seeded_support: ClassVar[bool] = False

    def __init__(self, sparsity: float = 0.1, *, seed: int | None = None) -> None:
        self._fraction = check_sparsity(sparsity)
        self.sparsity = sparsity
        self._select = TopKCodec(sparsity).select
        self._rounding = RoundingSource(seed)

    def omega(self, dim: int) -> float | None:
        """``None``: TopK is biased."""
        return None

    def alpha(self, dim: int) -> float | None:
        """``(1 - omega_q) K/d``; ``None`` if the 8-bit code's bound reaches 1."""
        k = kept_count(self._fraction, dim)
        if not k:
            return 1.0
        omega_q = q8_omega(k)
        return (1.0 - omega_q) * k / dim if omega_q < 1 else None

    def encode(self, vector: NDArray[np.float32], *, context: CodecContext | None = None) -> bytes:
        """Encode the top-k coordinates of ``vector``."""
        vector = as_update_vector(vector)
        indices = self._select(vector)
        k = indices.shape[0]
        gaps = np.diff(indices, prepend=-1) - 1
        r = rice_parameter(gaps)
        return b"".join(
            (
                k.to_bytes(4, "little"),
                bytes([r]),
                q8_encode(vector[indices], self._rounding(self.name, context)),
                pack_fields(gaps & ((1 << r) - 1), r),
                _quotient_stream(gaps >> r),
            )
        )

    def decode(
        self, data: bytes, dim: int, *, context: CodecContext | None = None
    ) -> NDArray[np.float32]:
        """Rebuild the dense vector, zeros where nothing was sent."""
        if len(data) < _PREFIX_BYTES:
            msg = f"top-k-q8 body of {len(data)} bytes is truncated"
            raise CodecError(msg)
        k = int.from_bytes(data[:4], "little")
        r = data[4]
        if k > dim or r > _MAX_RICE:
            msg = f"top-k-q8 body keeps {k} coordinates of {dim} with Rice parameter {r}"
            raise CodecError(msg)
        values_end = _PREFIX_BYTES + Q8_HEADER_BYTES + k
        remainders_end = values_end + field_bytes(k, r)
        if len(data) < remainders_end:
            msg = f"top-k-q8 body of {len(data)} bytes is truncated"
            raise CodecError(msg)
        values = q8_decode(data[_PREFIX_BYTES:values_end], k, self.name)
        remainders = unpack_fields(data[values_end:remainders_end], k, r, "top-k-q8 gaps")
        quotients = _read_quotients(data[remainders_end:], k)
        # Bound each quotient before shifting, so no crafted one can overflow int64, and
        # each gap below d, so the running sum stays below d^2 (in u64 for any d < 2^32).
        if k and int(quotients.max()) > (dim >> r):
            msg = "top-k-q8 gap beyond the vector"
            raise CodecError(msg)
        gaps = (quotients << r) | remainders
        if k and int(gaps.max()) >= dim:
            msg = "top-k-q8 gap beyond the vector"
            raise CodecError(msg)
        indices = np.cumsum(gaps.astype(np.uint64) + np.uint64(1)) - np.uint64(1)
        if k and int(indices[-1]) >= dim:
            msg = f"top-k-q8 index {int(indices[-1])} beyond dim {dim}"
            raise CodecError(msg)
        out = np.zeros(dim, dtype=np.float32)
        out[indices.astype(np.int64)] = values
        return out
