"""Update codecs, looked up by the permanent name carried in each update's header.

The registry is an explicit dict (as httpx keeps its decoders): names are what operators
write in config (``compression``) and what travels on the wire, so they never change.

==============  ===========  =====================================================
name            class        body
==============  ===========  =====================================================
``dense``       lossless     float32, 4 bytes per coordinate
``float16``     lossless     float16, 2 bytes per coordinate (near-lossless)
``top-k``       contractive  K largest, bitmap or u16/u32 indices + float16 values
``top-k-q8``    contractive  K largest, Rice-coded index gaps + 8-bit stochastic values
``rand-k``      unbiased     K on a shared-seed support (no indices), stochastic float16
``rand-k-q8``   unbiased     the same with 8-bit stochastic values
``natural``     unbiased     natural compression: sign + exponent, 9 bits per coordinate
``qsgd``        unbiased     QSGD, ``s`` levels (15): norm + 5 bits per coordinate
==============  ===========  =====================================================

Combinations are registered under their own names (``<sparsifier>-q8``), not composed from
a syntax: each is one wire format with one exact size and one proven ``omega``/``alpha``.
A ``lossless`` codec is both unbiased and contractive, so it fits every method
(:func:`fits_class`).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from byzedge.protocol.codecs.base import (
    Codec,
    CodecContext,
    CompressorClass,
    SupportMismatchError,
    as_update_vector,
)
from byzedge.protocol.codecs.dense import DenseCodec
from byzedge.protocol.codecs.float16 import Float16Codec
from byzedge.protocol.codecs.natural import NaturalCodec
from byzedge.protocol.codecs.qsgd import QSGDCodec
from byzedge.protocol.codecs.randk import RandKCodec, RandKQ8Codec
from byzedge.protocol.codecs.topk import TopKCodec
from byzedge.protocol.codecs.topk_q8 import TopKQ8Codec

__all__ = [
    "CODECS",
    "Codec",
    "CodecContext",
    "CompressorClass",
    "DenseCodec",
    "Float16Codec",
    "NaturalCodec",
    "QSGDCodec",
    "RandKCodec",
    "RandKQ8Codec",
    "SupportMismatchError",
    "TopKCodec",
    "TopKQ8Codec",
    "as_update_vector",
    "build_codec",
    "fits_class",
]

CODECS: Final[Mapping[str, type[Codec]]] = MappingProxyType(
    {
        DenseCodec.name: DenseCodec,
        Float16Codec.name: Float16Codec,
        TopKCodec.name: TopKCodec,
        TopKQ8Codec.name: TopKQ8Codec,
        RandKCodec.name: RandKCodec,
        RandKQ8Codec.name: RandKQ8Codec,
        NaturalCodec.name: NaturalCodec,
        QSGDCodec.name: QSGDCodec,
    }
)


def fits_class(codec: CompressorClass, required: str) -> bool:
    """Whether a codec of class ``codec`` serves a method that needs ``required``.

    ``required`` is ``"unbiased"``, ``"contractive"`` or ``"any"``; a ``lossless`` codec
    serves all three.
    """
    return required == "any" or codec in {required, "lossless"}


def build_codec(name: str, **params: Any) -> Codec:
    """Return the codec registered as ``name``, built with ``params``.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the known ones) or a bad parameter.
    """
    try:
        codec_type = CODECS[name]
    except KeyError:
        msg = f"unknown codec {name!r}; known: {', '.join(sorted(CODECS))}"
        raise ValueError(msg) from None
    try:
        return codec_type(**params)
    except TypeError as exc:
        msg = f"bad parameters for codec {name!r}: {exc}"
        raise ValueError(msg) from exc
