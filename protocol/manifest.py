"""The signed global model ("manifest"): what the coordinator publishes every round.

It travels in an ordinary envelope of kind ``model``: the body holds the parameters as
raw little-endian float32, and the header's ``meta`` says which architecture they belong
to, who is sampled this round (``cohort``; absent means everyone), when the round closes,
whether training is over (``final``), the body's SHA-256 (the model's identity in audit
records) and, for a training method other than FedAvg, the round's plan (``plan``: the
coin, step size, options and resync list of :class:`byzedge.methods.base.RoundPlan`,
signed with the rest so no device can choose them) and the model's layout (``layout``:
input shape, parameter names and shapes, dtype and their SHA-256, so a device whose model
code differs refuses the model, naming both shapes). Devices refuse any model that is not
signed by the coordinator's key, is for another fleet, has expired, or is older than the
one they already hold (no rollback).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from byzedge.protocol.codecs.base import as_update_vector
from byzedge.protocol.codecs.dense import DenseCodec
from byzedge.protocol.envelope import (
    Header,
    SealedEnvelope,
    open_envelope,
    seal,
)
from byzedge.protocol.errors import CodecError, EnvelopeError
from byzedge.protocol.signing import SigningKey, VerifyKey

__all__ = [
    "GlobalModel",
    "manifest_meta",
    "model_from_header",
    "open_global_model",
    "open_model_envelope",
    "seal_global_model",
]


@dataclass(frozen=True, slots=True)
class GlobalModel:
    """A verified global model.

    Attributes
    ----------
    round:
        The round devices should train for.
    version:
        Monotonic model version (number of aggregation steps applied).
    model:
        Registry name of the architecture.
    params:
        float32 ``(d,)`` parameter vector.
    cohort:
        Device ids sampled for this round; ``None`` means every device.
    deadline_ms:
        Unix ms after which the coordinator stops accepting updates for the round.
    final:
        ``True`` once training is over: serve it, do not train.
    sha256:
        Hex digest of the parameter bytes.
    counter:
        The coordinator's monotonic message counter; devices ignore a model whose counter
        is not above the last one they accepted (replays, stale retained copies).
    plan:
        The training method's round plan as a map (``RoundPlan.to_meta()``), ``None``
        for FedAvg.
    layout:
        The model's layout as a map (``byzedge.models.layout_meta``), ``None`` from a
        coordinator that predates it.
    """

    round: int
    version: int
    model: str
    params: NDArray[np.float32]
    cohort: frozenset[str] | None
    deadline_ms: int
    final: bool
    sha256: str
    counter: int
    plan: Mapping[str, Any] | None = None
    layout: Mapping[str, Any] | None = None

    def includes(self, device_id: str) -> bool:
        """Whether ``device_id`` should train this round."""
        return not self.final and (self.cohort is None or device_id in self.cohort)


def manifest_meta(
    *,
    model: str,
    cohort: frozenset[str] | None,
    deadline_ms: int,
    final: bool,
    sha256: str,
    plan: Mapping[str, Any] | None,
    layout: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The signed meta of a round's model, whatever carries the parameters."""
    return {
        "model": model,
        "cohort": sorted(cohort) if cohort is not None else None,
        "deadline_ms": deadline_ms,
        "final": final,
        "sha256": sha256,
        **({"plan": dict(plan)} if plan is not None else {}),
        **({"layout": dict(layout)} if layout is not None else {}),
    }


def seal_global_model(
    key: SigningKey,
    *,
    fleet: str,
    sender: str,
    round_number: int,
    version: int,
    model: str,
    params: NDArray[np.float32],
    counter: int,
    cohort: frozenset[str] | None = None,
    deadline_ms: int = 0,
    final: bool = False,
    ttl_s: float = 3600.0,
    plan: Mapping[str, Any] | None = None,
    layout: Mapping[str, Any] | None = None,
) -> SealedEnvelope:
    """Sign the global model for ``round_number``, with the method's ``plan`` and the layout."""
    body = DenseCodec().encode(as_update_vector(params))
    now_ms = int(time.time() * 1000)
    header = Header(
        kind="model",
        fleet=fleet,
        sender=sender,
        round=round_number,
        base_version=version,
        codec=DenseCodec.name,
        dim=int(params.shape[0]),
        counter=counter,
        created_ms=now_ms,
        expires_ms=now_ms + int(ttl_s * 1000),
        meta=manifest_meta(
            model=model,
            cohort=cohort,
            deadline_ms=deadline_ms,
            final=final,
            sha256=hashlib.sha256(body).hexdigest(),
            plan=plan,
            layout=layout,
        ),
    )
    return seal(header, body, key)


def open_global_model(
    payload: bytes,
    coordinator_key: VerifyKey,
    *,
    fleet: str,
    max_bytes: int,
    now_ms: int | None = None,
) -> GlobalModel:
    """Verify and decode a global model message.

    Raises
    ------
    ProtocolError
        (one of its subclasses) when the message is malformed, not signed by
        ``coordinator_key``, for another fleet, expired, or internally inconsistent.
    """
    envelope = open_model_envelope(
        payload, coordinator_key, fleet=fleet, max_bytes=max_bytes, now_ms=now_ms
    )
    header = envelope.header
    digest = hashlib.sha256(envelope.body).hexdigest()
    if header.meta.get("sha256") != digest:
        msg = "model body does not match its announced SHA-256"
        raise EnvelopeError(msg)
    if header.codec != DenseCodec.name:
        msg = f"models travel dense, got codec {header.codec!r}"
        raise CodecError(msg)
    params = DenseCodec().decode(envelope.body, header.dim)
    return model_from_header(header, params)


def open_model_envelope(
    payload: bytes,
    coordinator_key: VerifyKey,
    *,
    fleet: str,
    max_bytes: int,
    now_ms: int | None = None,
) -> SealedEnvelope:
    """The checks every coordinator-to-device message passes: size, signature, fleet, expiry.

    Raises
    ------
    ProtocolError
        As :func:`open_global_model`.
    """
    envelope = open_envelope(payload, max_bytes)
    envelope.verify(coordinator_key)
    header = envelope.header
    if header.kind != "model" or header.fleet != fleet:
        msg = f"expected a model for fleet {fleet!r}, got {header.kind} for {header.fleet!r}"
        raise EnvelopeError(msg)
    if header.is_expired(now_ms if now_ms is not None else int(time.time() * 1000)):
        msg = f"model for round {header.round} has expired"
        raise EnvelopeError(msg)
    return envelope


def model_from_header(header: Header, params: NDArray[np.float32]) -> GlobalModel:
    """The :class:`GlobalModel` that ``header``'s signed meta describes, with ``params``.

    ``params`` are the decoded (or, from a compressed broadcast, rebuilt) parameters; the
    caller has checked them against the meta's ``sha256``.

    Raises
    ------
    ProtocolError
        When the meta is malformed or the parameters are not finite.
    """
    if not np.isfinite(params).all():
        msg = "model holds non-finite parameters"
        raise CodecError(msg)
    meta = header.meta
    cohort = meta.get("cohort")
    model = meta.get("model")
    if not isinstance(model, str) or not (
        cohort is None or (isinstance(cohort, list) and all(isinstance(c, str) for c in cohort))
    ):
        msg = "model meta must name the architecture and list the cohort as strings"
        raise EnvelopeError(msg)
    deadline = meta.get("deadline_ms", 0)
    plan = meta.get("plan")
    if plan is not None and not isinstance(plan, dict):
        msg = "model meta's plan must be a map"
        raise EnvelopeError(msg)
    layout = meta.get("layout")
    if layout is not None and not isinstance(layout, dict):
        msg = "model meta's layout must be a map"
        raise EnvelopeError(msg)
    digest = meta.get("sha256")
    if not isinstance(digest, str):
        msg = "model meta must carry the parameters' SHA-256"
        raise EnvelopeError(msg)
    return GlobalModel(
        round=header.round,
        version=header.base_version,
        model=model,
        params=params,
        cohort=frozenset(cohort) if cohort is not None else None,
        deadline_ms=deadline if isinstance(deadline, int) else 0,
        final=meta.get("final") is True,
        sha256=digest,
        counter=header.counter,
        plan=plan,
        layout=layout,
    )
