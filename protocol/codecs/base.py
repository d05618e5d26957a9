"""The shape every update codec has."""

from __future__ import annotations

from typing import ClassVar, Protocol

import numpy as np
from numpy.typing import NDArray

__all__ = ["Codec", "as_update_vector"]


class Codec(Protocol):
    """Turns a float32 update vector into bytes and back.

    ``encode`` runs on the device, ``decode`` on the coordinator, which knows the expected
    dimension from the signed header and refuses any body that does not match it exactly.
    Lossy codecs return what the receiver will see from :meth:`roundtrip`, so the device
    can keep the difference as error feedback.
    """

    name: ClassVar[str]

    def encode(self, vector: NDArray[np.float32]) -> bytes:
        """Encode a float32 vector of shape ``(d,)``."""
        ...

    def decode(self, data: bytes, dim: int) -> NDArray[np.float32]:
        """Decode bytes into a float32 vector of shape ``(dim,)``; raise ``CodecError``.

        Only the framing is checked: NaN and infinities come through as they were sent.
        """
        ...


def as_update_vector(vector: NDArray[np.floating]) -> NDArray[np.float32]:
    """Return ``vector`` as a contiguous 1-D little-endian float32 array, or raise."""
    array = np.ascontiguousarray(vector, dtype="<f4")
    if array.ndim != 1:
        msg = f"an update vector must be 1-D, got shape {array.shape}"
        raise ValueError(msg)
    return array
