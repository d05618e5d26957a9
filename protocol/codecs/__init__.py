"""Update codecs, looked up by the permanent name carried in each update's header.

The registry is an explicit dict (as httpx keeps its decoders): names are what operators
write in config (``compression``) and what travels on the wire, so they never change.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from byzedge.protocol.codecs.base import Codec, as_update_vector
from byzedge.protocol.codecs.dense import DenseCodec
from byzedge.protocol.codecs.float16 import Float16Codec
from byzedge.protocol.codecs.topk import TopKCodec

__all__ = [
    "CODECS",
    "Codec",
    "DenseCodec",
    "Float16Codec",
    "TopKCodec",
    "as_update_vector",
    "build_codec",
]

CODECS: Final[Mapping[str, type[Codec]]] = MappingProxyType(
    {
        DenseCodec.name: DenseCodec,
        Float16Codec.name: Float16Codec,
        TopKCodec.name: TopKCodec,
    }
)


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
