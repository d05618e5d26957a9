"""``qsgd``: QSGD with ``s`` levels, unbiased.

Alistarh, Grubic, Li, Tomioka, Vojnovic, "QSGD: Communication-Efficient SGD via Gradient
Quantization and Encoding", NeurIPS 2017: with ``r_j = s |x_j| / ||x||_2`` and
``l = floor(r_j)``::

    Q_s(x)_j = ||x||_2 sign(x_j) xi_j / s,   xi_j = l + 1 with probability r_j - l, else l

so ``E[Q_s(x)] = x`` and ``omega = min(d/s^2, sqrt(d)/s)`` (their Lemma 3.1). We pack each
coordinate's level and sign in fixed-width fields instead of the paper's Elias coding: a
simple, constant ``1 + bit_length(s)`` bits. The default ``s = 15`` fills 5 bits exactly
(16 levels would need a 6th bit for level 16 alone).

Body (little-endian)::

    u16 s            levels, 1 .. 32767
    f4  norm         ||x||_2 rounded up to float32 (so r_j <= s: no clipping, no bias)
    fields[d]        sign | level << 1, (1 + bit_length(s)) bits each, LSB first, zero pad

``6 + ceil(d (1 + bit_length(s)) / 8)`` bytes.
"""

from __future__ import annotations

import math
import struct
from typing import ClassVar, Final

import numpy as np
from numpy.typing import NDArray

from byzedge.protocol.codecs.base import CodecContext, CompressorClass, as_update_vector
from byzedge.protocol.codecs.bits import pack_fields, unpack_fields
from byzedge.protocol.codecs.stochastic import RoundingSource
from byzedge.protocol.errors import CodecError

__all__ = ["QSGDCodec"]

_PREFIX_BYTES: Final = 6
_MAX_LEVELS: Final = 0x7FFF
DEFAULT_LEVELS: Final = 15


def _field_width(levels: int) -> int:
    return 1 + levels.bit_length()


class QSGDCodec:
    """Stochastic quantisation of ``|x_j| / ||x||`` to ``s`` levels.

    Parameters
    ----------
    levels:
        ``s``, in ``1 .. 32767`` (``s = 1`` is the 1-level ternary QSGD of algorithms.md §8).
    seed:
        Seed of the stochastic rounding (see
        :class:`~byzedge.protocol.codecs.stochastic.RoundingSource`).
    """

    name: ClassVar[str] = "qsgd"
    compressor_class: ClassVar[CompressorClass] = "unbiased"
    sparse: ClassVar[bool] = False
    seeded_support: ClassVar[bool] = False

    def __init__(self, levels: int = DEFAULT_LEVELS, *, seed: int | None = None) -> None:
        if isinstance(levels, bool) or not isinstance(levels, int):
            msg = f"levels must be an integer, got {levels!r}"
            raise TypeError(msg)
        if not 1 <= levels <= _MAX_LEVELS:
            msg = f"levels must be in 1..{_MAX_LEVELS}, got {levels}"
            raise ValueError(msg)
        self.levels = levels
        self._rounding = RoundingSource(seed)

    def omega(self, dim: int) -> float:
        """``min(d/s^2, sqrt(d)/s)`` (Alistarh et al. 2017, Lemma 3.1)."""
        return min(dim / self.levels**2, math.sqrt(dim) / self.levels)

    def alpha(self, dim: int) -> float | None:
        """``None``: unbiased, not contractive."""
        return None

    def encode(self, vector: NDArray[np.float32], *, context: CodecContext | None = None) -> bytes:
        """Quantise ``vector`` and pack levels and signs."""
        vector = as_update_vector(vector)
        s = self.levels
        values = vector.astype(np.float64)
        norm = float(np.linalg.norm(values)) if values.shape[0] else 0.0
        norm32 = np.float32(norm)
        if np.isfinite(norm32) and float(norm32) < norm:  # round up: r_j never exceeds s
            norm32 = np.nextafter(norm32, np.float32(np.inf))
        if not np.isfinite(norm32) or not np.isfinite(values).all():
            # Nothing honest gets here; NaN decodes to NaN, which the receiver rejects.
            return struct.pack("<Hf", s, float("nan")) + pack_fields(
                np.zeros(values.shape[0], dtype=np.int64), _field_width(s)
            )
        if norm32 > 0:
            scaled = np.abs(values) * (s / float(norm32))
            floor = np.floor(scaled)
            rng = self._rounding(self.name, context)
            levels = floor + (rng.random(values.shape[0]) < scaled - floor)
            levels = np.clip(levels, 0, s).astype(np.int64)
        else:
            levels = np.zeros(values.shape[0], dtype=np.int64)
        fields = np.signbit(values).astype(np.int64) | (levels << 1)
        return struct.pack("<Hf", s, float(norm32)) + pack_fields(fields, _field_width(s))

    def decode(
        self, data: bytes, dim: int, *, context: CodecContext | None = None
    ) -> NDArray[np.float32]:
        """Rebuild ``norm * sign * level / s``."""
        if len(data) < _PREFIX_BYTES:
            msg = f"qsgd body of {len(data)} bytes is truncated"
            raise CodecError(msg)
        s, norm = struct.unpack_from("<Hf", data)
        if not 1 <= s <= _MAX_LEVELS:
            msg = f"qsgd body with {s} levels"
            raise CodecError(msg)
        if norm < 0:  # NaN passes: decoded as sent, then rejected as non-finite
            msg = f"qsgd body with negative norm {norm}"
            raise CodecError(msg)
        fields = unpack_fields(data[_PREFIX_BYTES:], dim, _field_width(s), "qsgd levels")
        levels = fields >> 1
        if levels.shape[0] and int(levels.max()) > s:
            msg = f"qsgd level {int(levels.max())} above {s}"
            raise CodecError(msg)
        magnitudes = levels.astype(np.float64) * (float(norm) / s)
        with np.errstate(invalid="ignore", over="ignore"):
            signed = np.where(fields & 1, -magnitudes, magnitudes)
        out: NDArray[np.float32] = signed.astype(np.float32)
        return out
