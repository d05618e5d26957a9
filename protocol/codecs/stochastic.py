"""Unbiased stochastic rounding: float16 values and 8-bit values (sign + 7-bit level).

Rounding ``v`` to one of its two neighbours ``a <= v <= b`` on a grid, up with probability
``(v - a) / (b - a)``, keeps ``E[Q(v)] = v`` exactly (Gupta et al. ICML 2015; the rounding
QSGD and natural compression are built on). Its variance is ``(v - a)(b - v)``, at most
``(b - a)^2 / 4``.
"""

from __future__ import annotations

import hashlib
import math
import struct
from typing import Final

import numpy as np
from numpy.typing import NDArray

from byzedge.protocol.codecs.base import CodecContext
from byzedge.protocol.codecs.float16 import FLOAT16_MAX, FLOAT16_REL_ERROR
from byzedge.protocol.errors import CodecError

__all__ = [
    "Q8_HEADER_BYTES",
    "RoundingSource",
    "Q8_LEVELS",
    "q8_decode",
    "q8_encode",
    "q8_omega",
    "stochastic_float16",
    "stochastic_float16_omega",
]

Q8_LEVELS: Final = 127
"""Magnitude levels of the 8-bit code: 7 bits, the 8th is the sign."""
Q8_HEADER_BYTES: Final = 8
"""``f4 lo, f4 hi``: the magnitude range of an 8-bit block."""
_SIGN: Final = 0x80
_ROUNDING_DOMAIN: Final = b"byzedge/rounding/v1\x00"


class RoundingSource:
    """Where a codec's stochastic rounding draws its randomness.

    With a ``seed``: one generator for the codec's life (reproducible draws in tests).
    Without: a generator seeded by SHA-256 of the codec's name and the message's context,
    so a simulation replays exactly and each (fleet, round, sender) gets its own draws;
    without a context either, fresh entropy. Unbiasedness never depends on which: only the
    draws' independence from the value being rounded matters.
    """

    def __init__(self, seed: int | None) -> None:
        self._own = np.random.default_rng(seed) if seed is not None else None

    def __call__(self, codec: str, context: CodecContext | None) -> np.random.Generator:
        """The generator for one encode of ``codec`` in ``context``."""
        if self._own is not None:
            return self._own
        if context is None:
            return np.random.default_rng()
        material = "\x00".join((codec, context.fleet, context.sender, str(context.round)))
        digest = hashlib.sha256(_ROUNDING_DOMAIN + material.encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def stochastic_float16(values: NDArray[np.float32], rng: np.random.Generator) -> bytes:
    """Round each value to one of its two float16 neighbours, unbiased; little-endian bytes.

    Values beyond +-65504 saturate (the one biased case, never reached by an update of
    sane scale); NaN stays NaN.
    """
    clipped = np.clip(values, -FLOAT16_MAX, FLOAT16_MAX)
    near = clipped.astype(np.float16)
    back = near.astype(np.float64)
    wanted = clipped.astype(np.float64)
    # The float16 neighbour on the other side of the value (itself when exact).
    toward = np.where(back > wanted, -np.inf, np.inf).astype(np.float16)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        other = np.where(back == wanted, near, np.nextafter(near, toward))
        gap = np.abs(other.astype(np.float64) - back)
        chance = np.where(gap > 0, np.abs(wanted - back) / np.where(gap > 0, gap, 1.0), 0.0)
        chosen = np.where(rng.random(values.shape[0]) < chance, other, near)
    return chosen.astype("<f2").tobytes()


def stochastic_float16_omega() -> float:
    """``2**-22``: stochastic rounding's variance is at most ``(ulp/2)^2 <= 2**-22 v^2``."""
    return FLOAT16_REL_ERROR**2


def q8_encode(values: NDArray[np.float32], rng: np.random.Generator) -> bytes:
    """Encode ``values`` as ``f4 lo, f4 hi, u8 codes[k]``, unbiased.

    ``lo`` and ``hi`` are the smallest and largest magnitude; each magnitude is rounded
    stochastically to the grid ``lo + l (hi - lo) / 127``, ``l = 0..127``, and its code is
    ``sign << 7 | l``. Magnitudes span the grid, so a top-k block (magnitudes far from 0)
    keeps its resolution where its values are. A block with a non-finite value encodes
    ``lo = hi = NaN``, which decodes to NaN and is rejected by the receiver.
    """
    magnitudes = np.abs(values.astype(np.float64))
    if magnitudes.shape[0] == 0:
        return struct.pack("<ff", 0.0, 0.0)
    if not np.isfinite(magnitudes).all():
        nan = float("nan")
        return struct.pack("<ff", nan, nan) + bytes(magnitudes.shape[0])
    lo, hi = float(magnitudes.min()), float(magnitudes.max())
    step = (hi - lo) / Q8_LEVELS
    if step > 0:
        scaled = (magnitudes - lo) / step
        floor = np.floor(scaled)
        levels = floor + (rng.random(scaled.shape[0]) < scaled - floor)
        levels = np.clip(levels, 0, Q8_LEVELS).astype(np.uint8)
    else:  # every magnitude is lo: exact
        levels = np.zeros(magnitudes.shape[0], dtype=np.uint8)
    codes = levels | np.where(np.signbit(values), _SIGN, 0).astype(np.uint8)
    return struct.pack("<ff", lo, hi) + codes.tobytes()


def q8_decode(data: bytes, count: int, what: str) -> NDArray[np.float32]:
    """Decode what :func:`q8_encode` wrote for ``count`` values.

    Raises
    ------
    CodecError
        If ``data`` is not exactly ``8 + count`` bytes.
    """
    if len(data) != Q8_HEADER_BYTES + count:
        msg = f"{what}: 8-bit block of {len(data)} bytes, expected {Q8_HEADER_BYTES + count}"
        raise CodecError(msg)
    lo, hi = struct.unpack_from("<ff", data)
    codes = np.frombuffer(data, dtype=np.uint8, offset=Q8_HEADER_BYTES)
    levels = (codes & ~np.uint8(_SIGN)).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        magnitudes = lo + levels * ((float(hi) - float(lo)) / Q8_LEVELS)
        signed = np.where(codes & _SIGN, -magnitudes, magnitudes)
    out: NDArray[np.float32] = signed.astype(np.float32)
    return out


def q8_omega(count: int) -> float:
    """Variance bound of the 8-bit code on ``count`` values: ``min(k/(4·127²), √k/127)``.

    With step ``s = (hi - lo)/127 <= ||v||/127``, coordinate ``j`` has variance at most
    ``s²/4`` and at most ``s |v_j|``; summing gives ``k ||v||²/(4·127²)`` and
    ``s ||v||_1 <= √k ||v||²/127``.
    """
    return min(count / (4 * Q8_LEVELS**2), math.sqrt(count) / Q8_LEVELS)
