"""``rand-k`` and ``rand-k-q8``: K random coordinates from a seed both ends derive.

RandK (algorithms.md §8; Stich et al. NeurIPS 2018; the compressor of Byz-VR-MARINA's
experiments) keeps ``K = ceil(sparsity * d)`` coordinates chosen uniformly at random and
scales them by ``d/K``::

    C(x) = (d/K) * sum_{j in S} x_j e_j,   E[C(x)] = x,   E||C(x) - x||^2 = (d/K - 1)||x||^2

so it is unbiased with ``omega = d/K - 1``. The support ``S`` comes from a seed derived from
the fleet, the round and the sender (all in the signed header), so no index travels: the
coordinator rebuilds ``S`` itself. With ``support = "round"`` the sender is left out of the
seed, so every device of a round keeps the same coordinates: coordinate-wise robust rules
(the median over buckets that Byz-VR-MARINA's paper runs) then compare values of one
coordinate across devices, where per-device supports would hand them mostly zeros
(measured: MARINA with rand-k at 1% ends at 0.106 accuracy on per-device supports under the
bucketed coordinate median, benchmarks/results/methods.md). The receiver accepts either
seed's tag; anything else is refused. The body carries the first 8 bytes of the seed as a tag;
a body whose tag is not the shared seed's is a protocol violation
(:class:`~byzedge.protocol.codecs.base.SupportMismatchError`). Supports for different K
are prefixes of one random order, so a sender can pick K but never which coordinates.

Seed and support (fixed by this module forever; SHA-256 and SHAKE-256 are FIPS 180-4/202,
independent of numpy's generators)::

    seed    = SHA-256(b"byzedge/rand-k/v1" || 0x00 || u32 len || fleet || u32 len || sender
                      || u64 round)                       (little-endian lengths, UTF-8)
    (round) = SHA-256(b"byzedge/rand-k/round/v1" || 0x00 || u32 len || fleet || u64 round)
    keys    = SHAKE-256(seed) read as d little-endian u64
    S       = the K coordinates with the smallest (key, index)

Bodies (little-endian)::

    rand-k     8 tag | u32 K | f2 values[K]              12 + 2K bytes
    rand-k-q8  8 tag | u32 K | f4 lo | f4 hi | u8 [K]    20 + K bytes

Values are sent unscaled and rounded stochastically (float16 neighbours, or the 8-bit code
of :mod:`~byzedge.protocol.codecs.stochastic`), which keeps ``E[C(x)] = x``; the receiver
multiplies by ``d/K``. With a value quantizer of variance ``omega_q``, ``omega`` becomes
``(d/K)(1 + omega_q) - 1``.
"""

from __future__ import annotations

import hashlib
from typing import ClassVar, Final, Literal

import numpy as np
from numpy.typing import NDArray

from byzedge.protocol.codecs.base import (
    CodecContext,
    CompressorClass,
    SupportMismatchError,
    as_update_vector,
    check_sparsity,
    kept_count,
)
from byzedge.protocol.codecs.stochastic import (
    RoundingSource,
    q8_decode,
    q8_encode,
    q8_omega,
    stochastic_float16,
    stochastic_float16_omega,
)
from byzedge.protocol.errors import CodecError

__all__ = ["RandKCodec", "RandKQ8Codec", "SupportMode", "shared_seed", "shared_support"]

_DOMAIN: Final = b"byzedge/rand-k/v1\x00"
_ROUND_DOMAIN: Final = b"byzedge/rand-k/round/v1\x00"
SupportMode = Literal["device", "round"]
TAG_BYTES: Final = 8
_PREFIX_BYTES: Final = TAG_BYTES + 4


def shared_seed(context: CodecContext, support: SupportMode = "device") -> bytes:
    """The 32-byte seed of ``context``'s support (see the module docstring)."""
    fleet = context.fleet.encode()
    sender = context.sender.encode()
    if not 0 <= context.round < 2**64:
        msg = f"round {context.round} does not fit the rand-k seed"
        raise ValueError(msg)
    if support == "round":
        return hashlib.sha256(
            _ROUND_DOMAIN
            + len(fleet).to_bytes(4, "little")
            + fleet
            + context.round.to_bytes(8, "little")
        ).digest()
    material = b"".join(
        (
            _DOMAIN,
            len(fleet).to_bytes(4, "little"),
            fleet,
            len(sender).to_bytes(4, "little"),
            sender,
            context.round.to_bytes(8, "little"),
        )
    )
    return hashlib.sha256(material).digest()


def shared_support(seed: bytes, dim: int, k: int) -> NDArray[np.int64]:
    """Sorted indices of the ``k`` coordinates with the smallest ``(key, index)``."""
    if k >= dim:
        return np.arange(dim, dtype=np.int64)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    keys = np.frombuffer(hashlib.shake_256(seed).digest(8 * dim), dtype="<u8")
    # O(d): the K-th smallest key, then every key below it and, for (astronomically rare)
    # ties at it, the lowest indices first, as the (key, index) rule says.
    kth = keys[np.argpartition(keys, k - 1)[k - 1]]
    below = np.flatnonzero(keys < kth)
    tied = np.flatnonzero(keys == kth)[: k - below.shape[0]]
    return np.sort(np.concatenate((below, tied))).astype(np.int64)


class _SharedSupport:
    """The support of the last (seed, dim, k) asked, since a device encodes then decodes."""

    def __init__(self) -> None:
        self._key: tuple[bytes, int, int] | None = None
        self._indices: NDArray[np.int64] = np.zeros(0, dtype=np.int64)

    def __call__(self, seed: bytes, dim: int, k: int) -> NDArray[np.int64]:
        if self._key != (seed, dim, k):
            self._indices = shared_support(seed, dim, k)
            self._key = (seed, dim, k)
        return self._indices


class RandKCodec:
    """Unbiased RandK on a shared-seed support, values as stochastic float16.

    Parameters
    ----------
    sparsity:
        Fraction of coordinates kept, in ``(0, 1]`` (config key ``sparsity``).
    seed:
        Seed of the stochastic rounding (see
        :class:`~byzedge.protocol.codecs.stochastic.RoundingSource`); the support does not
        depend on it.
    support:
        ``"device"`` (each sender its own support) or ``"round"`` (every sender of a round
        the same one); decoding accepts either.
    """

    name: ClassVar[str] = "rand-k"
    compressor_class: ClassVar[CompressorClass] = "unbiased"
    sparse: ClassVar[bool] = True
    seeded_support: ClassVar[bool] = True
    _value_bytes: ClassVar[int] = 2
    _block_header: ClassVar[int] = 0

    def __init__(
        self, sparsity: float = 0.1, *, seed: int | None = None, support: SupportMode = "device"
    ) -> None:
        if support not in ("device", "round"):
            msg = f"rand-k support must be 'device' or 'round', got {support!r}"
            raise ValueError(msg)
        self.support: SupportMode = support
        self._fraction = check_sparsity(sparsity)
        self.sparsity = sparsity
        self._rounding = RoundingSource(seed)
        self._support = _SharedSupport()

    def omega(self, dim: int) -> float:
        """``(d/K)(1 + 2**-22) - 1``: RandK's ``d/K - 1`` and float16 rounding's share."""
        return self._omega_with(dim, stochastic_float16_omega())

    def alpha(self, dim: int) -> float | None:
        """``None``: unbiased, not contractive (``C/(omega + 1)`` would be)."""
        return None

    def _omega_with(self, dim: int, value_omega: float) -> float:
        k = kept_count(self._fraction, dim)
        return dim / k * (1.0 + value_omega) - 1.0 if k else 0.0

    def _encode_values(self, values: NDArray[np.float32], rng: np.random.Generator) -> bytes:
        return stochastic_float16(values, rng)

    def _decode_values(self, data: bytes, k: int) -> NDArray[np.float32]:
        return np.frombuffer(data, dtype="<f2").astype(np.float32)

    def encode(self, vector: NDArray[np.float32], *, context: CodecContext | None = None) -> bytes:
        """Encode ``vector``'s coordinates on the shared support of ``context``.

        Raises
        ------
        ValueError
            Without a ``context`` (a programming error: the sender always has one).
        """
        if context is None:
            msg = f"{self.name} needs a codec context (fleet, round, sender) to encode"
            raise ValueError(msg)
        vector = as_update_vector(vector)
        dim = vector.shape[0]
        k = kept_count(self._fraction, dim)
        seed = shared_seed(context, self.support)
        indices = self._support(seed, dim, k)
        prefix = seed[:TAG_BYTES] + k.to_bytes(4, "little")
        rng = self._rounding(self.name, context)
        return prefix + self._encode_values(vector[indices], rng)

    def decode(
        self, data: bytes, dim: int, *, context: CodecContext | None = None
    ) -> NDArray[np.float32]:
        """Rebuild ``(d/K) x_S`` on the shared support, zeros elsewhere.

        Raises
        ------
        SupportMismatchError
            If the body's tag is not the seed of ``context``.
        CodecError
            For any other defect, or without a ``context``.
        """
        if len(data) < _PREFIX_BYTES:
            msg = f"{self.name} body of {len(data)} bytes is truncated"
            raise CodecError(msg)
        k = int.from_bytes(data[TAG_BYTES:_PREFIX_BYTES], "little")
        if k > dim or (k == 0) != (dim == 0):
            msg = f"{self.name} body keeps {k} coordinates of {dim}"
            raise CodecError(msg)
        expected = _PREFIX_BYTES + self._block_header + self._value_bytes * k
        if len(data) != expected:
            msg = f"{self.name} body of {len(data)} bytes, expected {expected}"
            raise CodecError(msg)
        if context is None:
            msg = f"{self.name} needs a codec context (fleet, round, sender) to decode"
            raise CodecError(msg)
        seeds = [shared_seed(context, "device"), shared_seed(context, "round")]
        seed = next((c for c in seeds if data[:TAG_BYTES] == c[:TAG_BYTES]), None)
        if seed is None:
            msg = (
                f"{self.name} body tagged {data[:TAG_BYTES].hex()}; the shared seeds of "
                f"round {context.round} for {context.sender!r} are "
                f"{seeds[0][:TAG_BYTES].hex()} (device) and {seeds[1][:TAG_BYTES].hex()} (round)"
            )
            raise SupportMismatchError(msg)
        out = np.zeros(dim, dtype=np.float32)
        if k:
            # A sender's NaN or infinity comes through for the receiver to reject.
            with np.errstate(invalid="ignore", over="ignore"):
                values = self._decode_values(data[_PREFIX_BYTES:], k).astype(np.float64)
                out[self._support(seed, dim, k)] = values * (dim / k)
        return out


class RandKQ8Codec(RandKCodec):
    """``rand-k`` with 8-bit stochastic values: ``20 + K`` bytes.

    ``omega = (d/K)(1 + min(K/(4·127²), √K/127)) - 1`` (see
    :func:`~byzedge.protocol.codecs.stochastic.q8_omega`).
    """

    name: ClassVar[str] = "rand-k-q8"
    _value_bytes: ClassVar[int] = 1
    _block_header: ClassVar[int] = 8

    def omega(self, dim: int) -> float:
        """``(d/K)(1 + omega_q8(K)) - 1``."""
        return self._omega_with(dim, q8_omega(kept_count(self._fraction, dim)))

    def _encode_values(self, values: NDArray[np.float32], rng: np.random.Generator) -> bytes:
        return q8_encode(values, rng)

    def _decode_values(self, data: bytes, k: int) -> NDArray[np.float32]:
        return q8_decode(data, k, self.name)
