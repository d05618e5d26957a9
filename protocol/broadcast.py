"""The compressed model broadcast (Byz-EF21-BC) and its dense resync message.

Byz-EF21-BC's server moves the model by ``x_{r+1} = x_r - gamma (g_{r-1} + b_r)`` with a
sparse ``b_r`` (:mod:`byzedge.methods.ef21_bc`). A device that holds ``(x_r, g_{r-1})``
needs only ``b_r`` to rebuild ``x_{r+1}``, so besides the dense model the coordinator
publishes two retained, signed messages of kind ``model``:

- the **broadcast** (topic ``byzedge/{fleet}/model/broadcast``, codec ``bc-delta``): the
  round's manifest (cohort, deadline, plan, layout and the SHA-256 of ``x_{r+1}``), the
  digests of the pair it applies to and of the ``g`` it yields, and ``b_r`` as its
  support (uint32 indices) and values (float32). Its ``mode`` says what to do with it:
  ``delta`` (apply ``b_r``), ``resync`` (this round cannot be followed from the last: fetch
  the pair) or ``dense`` (the fleet no longer broadcasts compressed: follow the dense model);
- the **resync** pair (topic ``byzedge/{fleet}/model/resync``, codec ``bc-resync``): the
  same manifest with ``x_{r+1}`` and ``g_r`` dense, for a device that has no pair or missed
  a broadcast; devices subscribe to it only when they need it.

Both are signed by the coordinator like the dense model and checked the same way
(:func:`~byzedge.protocol.manifest.open_model_envelope`); the rebuilt parameters must hash
to the manifest's ``sha256`` and the rebuilt ``g`` to ``g_sha256``, so a device never
trains on a model the coordinator did not sign.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
from numpy.typing import NDArray

from byzedge.protocol.envelope import Header, SealedEnvelope, seal
from byzedge.protocol.errors import CodecError, EnvelopeError
from byzedge.protocol.manifest import (
    GlobalModel,
    manifest_meta,
    model_from_header,
    open_model_envelope,
)
from byzedge.protocol.signing import SigningKey, VerifyKey

__all__ = [
    "BROADCAST_CODEC",
    "RESYNC_CODEC",
    "BroadcastMode",
    "ModelBroadcast",
    "ModelResync",
    "Round",
    "open_model_broadcast",
    "open_model_resync",
    "seal_model_broadcast",
    "seal_model_resync",
    "vector_digest",
]

BROADCAST_CODEC: Final = "bc-delta"
RESYNC_CODEC: Final = "bc-resync"
BroadcastMode = Literal["delta", "resync", "dense"]
_MODES: Final = frozenset({"delta", "resync", "dense"})


def vector_digest(vector: NDArray[np.float32]) -> str:
    """SHA-256 hex of ``vector`` as raw little-endian float32 (the manifest's ``sha256``)."""
    return hashlib.sha256(np.ascontiguousarray(vector, dtype="<f4").tobytes()).hexdigest()


@dataclass(frozen=True, slots=True)
class Round:
    """The manifest fields every coordinator-to-device message of a round carries."""

    fleet: str
    sender: str
    round: int
    version: int
    model: str
    counter: int
    cohort: frozenset[str] | None = None
    deadline_ms: int = 0
    final: bool = False
    ttl_s: float = 3600.0
    plan: Mapping[str, Any] | None = None
    layout: Mapping[str, Any] | None = None

    def header(self, *, codec: str, dim: int, sha256: str, downlink: dict[str, Any]) -> Header:
        """The signed header of one of the round's messages."""
        now_ms = int(time.time() * 1000)
        meta = manifest_meta(
            model=self.model,
            cohort=self.cohort,
            deadline_ms=self.deadline_ms,
            final=self.final,
            sha256=sha256,
            plan=self.plan,
            layout=self.layout,
        )
        return Header(
            kind="model",
            fleet=self.fleet,
            sender=self.sender,
            round=self.round,
            base_version=self.version,
            codec=codec,
            dim=dim,
            counter=self.counter,
            created_ms=now_ms,
            expires_ms=now_ms + int(self.ttl_s * 1000),
            meta={**meta, "downlink": downlink},
        )


@dataclass(frozen=True, slots=True)
class ModelBroadcast:
    """A verified broadcast.

    Attributes
    ----------
    mode:
        ``delta``, ``resync`` or ``dense`` (module docstring).
    header:
        The signed header (its meta is the round's manifest).
    base_sha256, base_g_sha256:
        Digests of the ``(x, g)`` pair ``b`` applies to (``delta`` only).
    sha256, g_sha256:
        Digests of the pair ``b`` yields.
    step, step_size:
        Whether the round moved the model, and the step ``gamma`` it moved it by.
    broadcast:
        ``b`` as a dense float32 ``(d,)`` vector, zeros off its support (``delta`` only).
    """

    mode: BroadcastMode
    header: Header
    base_sha256: str = ""
    base_g_sha256: str = ""
    sha256: str = ""
    g_sha256: str = ""
    step: bool = False
    step_size: float = 0.0
    broadcast: NDArray[np.float32] | None = None

    @property
    def counter(self) -> int:
        """The coordinator's message counter (the dense model of the round has the same)."""
        return self.header.counter

    def model(self, params: NDArray[np.float32]) -> GlobalModel:
        """The round's model, given the parameters rebuilt from this broadcast.

        Raises
        ------
        EnvelopeError
            When ``params`` do not hash to the signed ``sha256``.
        """
        if vector_digest(params) != self.sha256:
            msg = "rebuilt model does not match the broadcast's signed SHA-256"
            raise EnvelopeError(msg)
        return model_from_header(self.header, params)


@dataclass(frozen=True, slots=True)
class ModelResync:
    """A verified resync pair: the round's model and the ``g`` devices hold beside it."""

    model: GlobalModel
    g: NDArray[np.float32]
    g_sha256: str


def seal_model_broadcast(
    key: SigningKey,
    meta: Round,
    *,
    mode: BroadcastMode,
    dim: int,
    sha256: str,
    g_sha256: str = "",
    base_sha256: str = "",
    base_g_sha256: str = "",
    broadcast: NDArray[np.float32] | None = None,
    step: bool = False,
    step_size: float = 0.0,
) -> SealedEnvelope:
    """Sign a broadcast; ``broadcast`` (dense, zeros off its support) only for ``delta``."""
    body = b""
    nnz = 0
    if mode == "delta":
        if broadcast is None or broadcast.shape != (dim,):
            msg = "a delta broadcast needs b as a (dim,) vector"
            raise ValueError(msg)
        support = np.flatnonzero(broadcast).astype("<u4")
        values = np.ascontiguousarray(broadcast[support], dtype="<f4")
        body = support.tobytes() + values.tobytes()
        nnz = int(support.size)
    downlink = {
        "mode": mode,
        "g_sha256": g_sha256,
        "base_sha256": base_sha256,
        "base_g_sha256": base_g_sha256,
        "step": step,
        "step_size": float(step_size),
        "nnz": nnz,
    }
    header = meta.header(codec=BROADCAST_CODEC, dim=dim, sha256=sha256, downlink=downlink)
    return seal(header, body, key)


def seal_model_resync(
    key: SigningKey, meta: Round, params: NDArray[np.float32], g: NDArray[np.float32]
) -> SealedEnvelope:
    """Sign the dense pair ``(x, g)`` of a round."""
    x_bytes = np.ascontiguousarray(params, dtype="<f4").tobytes()
    g_bytes = np.ascontiguousarray(g, dtype="<f4").tobytes()
    downlink = {"mode": "resync", "g_sha256": vector_digest(g)}
    header = meta.header(
        codec=RESYNC_CODEC,
        dim=int(params.shape[0]),
        sha256=hashlib.sha256(x_bytes).hexdigest(),
        downlink=downlink,
    )
    return seal(header, x_bytes + g_bytes, key)


def _downlink(header: Header, codec: str) -> dict[str, Any]:
    if header.codec != codec:
        msg = f"expected codec {codec!r}, got {header.codec!r}"
        raise CodecError(msg)
    downlink = header.meta.get("downlink")
    if not isinstance(downlink, dict) or downlink.get("mode") not in _MODES:
        msg = "broadcast meta must carry a downlink map with a known mode"
        raise EnvelopeError(msg)
    return downlink


def _text(downlink: Mapping[str, Any], name: str) -> str:
    value = downlink.get(name, "")
    if not isinstance(value, str):
        msg = f"downlink {name} must be a string"
        raise EnvelopeError(msg)
    return value


def open_model_broadcast(
    payload: bytes,
    coordinator_key: VerifyKey,
    *,
    fleet: str,
    max_bytes: int,
    now_ms: int | None = None,
) -> ModelBroadcast:
    """Verify and decode a broadcast.

    Raises
    ------
    ProtocolError
        (a subclass) when it is malformed, forged, for another fleet, expired, or its
        support is out of range, repeated or its values are not finite.
    """
    envelope = open_model_envelope(
        payload, coordinator_key, fleet=fleet, max_bytes=max_bytes, now_ms=now_ms
    )
    header = envelope.header
    downlink = _downlink(header, BROADCAST_CODEC)
    mode: BroadcastMode = downlink["mode"]
    step = downlink.get("step", False)
    step_size = downlink.get("step_size", 0.0)
    nnz = downlink.get("nnz", 0)
    if (
        not isinstance(step, bool)
        or not isinstance(step_size, float)
        or not isinstance(nnz, int)
        or not 0 <= nnz <= header.dim
    ):
        msg = "broadcast's step, step_size or nnz is malformed"
        raise EnvelopeError(msg)
    broadcast: NDArray[np.float32] | None = None
    if mode == "delta":
        broadcast = _sparse_body(envelope.body, nnz, header.dim)
    sha256 = header.meta.get("sha256")
    return ModelBroadcast(
        mode=mode,
        header=header,
        base_sha256=_text(downlink, "base_sha256"),
        base_g_sha256=_text(downlink, "base_g_sha256"),
        sha256=sha256 if isinstance(sha256, str) else "",
        g_sha256=_text(downlink, "g_sha256"),
        step=step,
        step_size=step_size,
        broadcast=broadcast,
    )


def _sparse_body(body: bytes, nnz: int, dim: int) -> NDArray[np.float32]:
    if len(body) != 8 * nnz:
        msg = f"broadcast body of {len(body)} bytes does not hold {nnz} coordinates"
        raise CodecError(msg)
    support = np.frombuffer(body, dtype="<u4", count=nnz)
    values = np.frombuffer(body, dtype="<f4", count=nnz, offset=4 * nnz)
    if nnz and (int(support.max()) >= dim or np.unique(support).size != nnz):
        msg = "broadcast support is out of range or repeats a coordinate"
        raise CodecError(msg)
    if not np.isfinite(values).all():
        msg = "broadcast holds non-finite values"
        raise CodecError(msg)
    dense = np.zeros(dim, dtype=np.float32)
    dense[support] = values
    return dense


def open_model_resync(
    payload: bytes,
    coordinator_key: VerifyKey,
    *,
    fleet: str,
    max_bytes: int,
    now_ms: int | None = None,
) -> ModelResync:
    """Verify and decode a resync pair.

    Raises
    ------
    ProtocolError
        (a subclass) when it is malformed, forged, for another fleet, expired, or either
        vector does not match its signed digest.
    """
    envelope = open_model_envelope(
        payload, coordinator_key, fleet=fleet, max_bytes=max_bytes, now_ms=now_ms
    )
    header = envelope.header
    downlink = _downlink(header, RESYNC_CODEC)
    dim = header.dim
    if len(envelope.body) != 8 * dim:
        msg = f"resync body of {len(envelope.body)} bytes does not hold two {dim}-vectors"
        raise CodecError(msg)
    params = np.frombuffer(envelope.body, dtype="<f4", count=dim).astype(np.float32)
    g = np.frombuffer(envelope.body, dtype="<f4", count=dim, offset=4 * dim).astype(np.float32)
    if not np.isfinite(g).all():
        msg = "resync's g holds non-finite values"
        raise CodecError(msg)
    g_sha256 = _text(downlink, "g_sha256")
    if vector_digest(g) != g_sha256:
        msg = "resync's g does not match its signed SHA-256"
        raise EnvelopeError(msg)
    if vector_digest(params) != header.meta.get("sha256"):
        msg = "resync's model does not match its signed SHA-256"
        raise EnvelopeError(msg)
    return ModelResync(model=model_from_header(header, params), g=g, g_sha256=g_sha256)
