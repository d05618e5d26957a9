"""The shape every update codec has, and what a codec may know about the message it is in."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from byzedge.protocol.errors import CodecError

__all__ = [
    "Codec",
    "CodecContext",
    "CompressorClass",
    "SupportMismatchError",
    "as_update_vector",
    "kept_count",
]

CompressorClass = Literal["unbiased", "contractive", "lossless"]
"""What a codec's ``C`` guarantees (Richtárik et al.'s two classes, algorithms.md §8).

``"unbiased"``: ``E[C(x)] = x`` and ``E||C(x) - x||^2 <= omega ||x||^2``.
``"contractive"``: ``E||C(x) - x||^2 <= (1 - alpha) ||x||^2`` with ``alpha`` in ``(0, 1]``.
``"lossless"``: the identity (or the identity up to float rounding), so it is both.
"""


@dataclass(frozen=True, slots=True)
class CodecContext:
    """What both ends know about an update besides its body: from the signed header.

    A codec that needs shared randomness (``rand-k``'s indices) derives it from these, so
    nothing of it travels; the others ignore the context.
    """

    fleet: str
    round: int
    sender: str


class SupportMismatchError(CodecError):
    """A sparse body whose support is not the one both ends derive from the shared seed.

    Only the holder of the sender's key can sign such a body, so receivers count it against
    the sender (a protocol violation, not a transmission error).
    """


class Codec(Protocol):
    """Turns a float32 update vector into bytes and back.

    ``encode`` runs on the device, ``decode`` on the coordinator, which knows the expected
    dimension from the signed header and refuses any body that does not match it exactly.
    Every parameter ``decode`` needs travels in the body, so a receiver decodes with a
    default-built codec. Lossy codecs return what the receiver will see from a round trip,
    so the device can keep the difference as error feedback.

    Class attributes
    ----------------
    name:
        Permanent registry name (config ``compression``, header ``codec``).
    compressor_class:
        Which guarantee ``C`` gives (:data:`CompressorClass`); a training method refuses the
        wrong one at config check.
    sparse:
        Whether the codec takes the ``sparsity`` parameter (config key ``sparsity``).
    seeded_support:
        Whether its support comes from a seed both ends derive and it takes the
        ``support`` parameter (``"device"`` or ``"round"``: ``rand-k``).
    """

    name: ClassVar[str]
    compressor_class: ClassVar[CompressorClass]
    sparse: ClassVar[bool]
    seeded_support: ClassVar[bool]

    def encode(self, vector: NDArray[np.float32], *, context: CodecContext | None = None) -> bytes:
        """Encode a float32 vector of shape ``(d,)``."""
        ...

    def decode(
        self, data: bytes, dim: int, *, context: CodecContext | None = None
    ) -> NDArray[np.float32]:
        """Decode bytes into a float32 vector of shape ``(dim,)``; raise ``CodecError``.

        Only the framing is checked: NaN and infinities come through as they were sent.
        """
        ...

    def omega(self, dim: int) -> float | None:
        """Variance bound ``omega`` of an unbiased (or lossless) codec at dimension ``dim``."""
        ...

    def alpha(self, dim: int) -> float | None:
        """Contraction ``alpha`` of a contractive (or lossless) codec at dimension ``dim``."""
        ...


def as_update_vector(vector: NDArray[np.floating]) -> NDArray[np.float32]:
    """Return ``vector`` as a contiguous 1-D little-endian float32 array, or raise."""
    array = np.ascontiguousarray(vector, dtype="<f4")
    if array.ndim != 1:
        msg = f"an update vector must be 1-D, got shape {array.shape}"
        raise ValueError(msg)
    return array


def check_sparsity(sparsity: float) -> Fraction:
    """Validate a sparsity in ``(0, 1]`` and return it as the exact decimal written.

    ``0.07 * 100`` is ``7.000000000000001`` in binary floating point, and its ceiling would
    keep 8 coordinates instead of 7; ``Fraction(str(0.07))`` is exactly ``7/100``.
    """
    if not 0.0 < sparsity <= 1.0:
        msg = f"sparsity must be in (0, 1], got {sparsity!r}"
        raise ValueError(msg)
    return Fraction(str(sparsity))


def kept_count(fraction: Fraction, dim: int) -> int:
    """``K = min(d, max(1, ceil(fraction * d)))``, and 0 for ``d = 0``."""
    return min(dim, max(1, math.ceil(fraction * dim))) if dim else 0
