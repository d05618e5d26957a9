"""The round context: what the leader tells its ingest workers about the open round.

Published retained on ``byzedge/{fleet}/cluster/context``, signed by the coordinator's key
(an envelope of kind ``context``, verified by each worker as agents verify the model), before
the round's model goes out. It says everything a worker needs to judge and fold updates
exactly as the leader would have:

* ``round``, ``model_version``, ``cohort``, ``dim``: ingest's round window;
* ``mode``: ``"rows"`` (send each accepted update's decoded vector; the leader runs the
  batch step: scoring, order statistics, certificates) or ``"sum"`` (fold the updates into
  the rule's partial sums; the round engine's streaming path merges them);
* for ``"sum"``: the rule's name and parameters (a worker whose configuration differs
  refuses to fold), its state (clipping-vr's reference and lagged radius), and the weight
  each device will have in the step (its reputation after a good round, as
  ``ReputationBook.after`` computes it; ``default_weight`` for a device without a record);
* ``epoch``: the leader's fencing epoch. A worker ignores a context of a lower epoch
  than one it has seen (a deposed leader's).

``basis`` is the SHA-256 of everything the folding depends on (not the epoch or the
time): a partial folded against one basis is merged only into a round with the same, so a
standby leader that reopens the round from the same saved state takes the partials its
predecessor was sent.

Why not the model manifest alone: a large model is not retained (it goes out chunked),
and a worker needs the rule's state and the weights, which the manifest does not carry.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgpack

from byzedge.protocol.envelope import Header, open_envelope, seal
from byzedge.protocol.errors import EnvelopeError
from byzedge.protocol.signing import SigningKey, VerifyKey

__all__ = ["RoundContext", "canonical", "open_context", "seal_context"]

_CODEC: Final = "msgpack"
_MAX_CONTEXT_BYTES: Final = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class RoundContext:
    """A verified round context (see the module docstring)."""

    round: int
    model_version: int
    epoch: int
    dim: int
    mode: Literal["rows", "sum"]
    cohort: frozenset[str] | None = None
    rule: str = ""
    rule_params: Mapping[str, Any] | None = None
    rule_state: Mapping[str, Any] | None = None
    weights: Mapping[str, float] | None = None
    default_weight: float | None = None
    counter: int = 0

    def weight(self, device_id: str) -> float:
        """The weight ``device_id``'s update is folded with (1 without reputation weights)."""
        if self.default_weight is None:
            return 1.0
        if self.weights is not None and device_id in self.weights:
            return self.weights[device_id]
        return self.default_weight

    @property
    def basis(self) -> bytes:
        """SHA-256 of what folding depends on (everything but the epoch and the counter)."""
        return hashlib.sha256(_pack(_basis_document(self))).digest()


def _basis_document(context: RoundContext) -> dict[str, Any]:
    return {
        "round": context.round,
        "model_version": context.model_version,
        "dim": context.dim,
        "mode": context.mode,
        "cohort": sorted(context.cohort) if context.cohort is not None else None,
        "rule": context.rule,
        "rule_params": canonical(context.rule_params),
        "rule_state": canonical(context.rule_state),
        "weights": canonical(context.weights),
        "default_weight": context.default_weight,
    }


def canonical(value: Any) -> Any:
    """``value`` with every map's keys sorted, so equal contents pack to equal bytes."""
    if isinstance(value, Mapping):
        return {str(k): canonical(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, list | tuple):
        return [canonical(item) for item in value]
    return value


def _pack(document: Any) -> bytes:
    packed: bytes = msgpack.packb(document, use_bin_type=True)
    return packed


def seal_context(
    key: SigningKey, context: RoundContext, *, fleet: str, sender: str, ttl_s: float
) -> bytes:
    """Sign ``context`` for ``fleet``; returns the envelope's wire bytes."""
    body = {**_basis_document(context), "epoch": context.epoch}
    now_ms = int(time.time() * 1000)
    header = Header(
        kind="context",
        fleet=fleet,
        sender=sender,
        round=context.round,
        base_version=context.model_version,
        codec=_CODEC,
        dim=context.dim,
        counter=context.counter,
        created_ms=now_ms,
        expires_ms=now_ms + int(ttl_s * 1000),
    )
    return seal(header, _pack(body), key).to_bytes()


def open_context(payload: bytes, coordinator_key: VerifyKey, *, fleet: str) -> RoundContext:
    """Verify and decode a round context.

    Raises
    ------
    ProtocolError
        (one of its subclasses) when the message is malformed, not signed by
        ``coordinator_key``, not a context, for another fleet, or expired.
    """
    envelope = open_envelope(payload, _MAX_CONTEXT_BYTES)
    envelope.verify(coordinator_key)
    header = envelope.header
    if header.kind != "context" or header.fleet != fleet:
        msg = f"expected a round context for fleet {fleet!r}, got {header.kind}"
        raise EnvelopeError(msg)
    if header.is_expired(int(time.time() * 1000)):
        raise EnvelopeError(f"round context for round {header.round} has expired")
    try:
        body = msgpack.unpackb(envelope.body, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise EnvelopeError(f"round context body is not msgpack: {exc}") from exc
    if not isinstance(body, dict):
        raise EnvelopeError("round context body must be a map")
    mode = body.get("mode")
    cohort = body.get("cohort")
    weights = body.get("weights")
    default_weight = body.get("default_weight")
    rule_params, rule_state = body.get("rule_params"), body.get("rule_state")
    epoch = body.get("epoch")
    if (
        mode not in ("rows", "sum")
        or type(epoch) is not int
        or body.get("round") != header.round
        or body.get("model_version") != header.base_version
        or body.get("dim") != header.dim
        or not isinstance(body.get("rule"), str)
        or not (
            cohort is None or (isinstance(cohort, list) and all(isinstance(c, str) for c in cohort))
        )
        or not (rule_params is None or isinstance(rule_params, dict))
        or not (rule_state is None or isinstance(rule_state, dict))
        or not (weights is None or _weight_map(weights))
        or not (default_weight is None or isinstance(default_weight, float | int))
    ):
        raise EnvelopeError("round context body is inconsistent")
    return RoundContext(
        round=header.round,
        model_version=header.base_version,
        epoch=epoch,
        dim=header.dim,
        mode=mode,
        cohort=frozenset(cohort) if cohort is not None else None,
        rule=body["rule"],
        rule_params=rule_params,
        rule_state=rule_state,
        weights={k: float(v) for k, v in weights.items()} if weights is not None else None,
        default_weight=None if default_weight is None else float(default_weight),
        counter=header.counter,
    )


def _weight_map(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, float | int) and not isinstance(v, bool)
        for k, v in value.items()
    )
