"""From a trained delta to signed MQTT bytes.

::

    worker momentum -> stages -> compress (error feedback) -> seal -> wire stages

Worker momentum (``momentum1 = β``; Karimireddy, He, Jaggi, ICML 2021, and the ``mom_sgd``
base method of Byz-VR-MARINA-PP): the device keeps ``m <- β m + (1 - β) Δ``, ``Δ`` its
trained delta, and sends ``m``. ``m`` changes only in rounds the device trains in, so it
ages through the rounds it is not asked in. Attack stages come after it: they rewrite what
the device would have sent.

Error feedback (Seide et al. 2014; Karimireddy et al. ICML 2019): with a lossy codec ``C``
the device sends ``C(p)`` where ``p = u + e`` and keeps ``e <- p - decode(C(p))``, so what
compression drops this round is sent in a later one instead of being lost.

Both are device-side state across rounds: :meth:`UpdatePipeline.state_dict` holds them, and
the agent persists it in its state file so a restart keeps them (and the fleet simulator
runs this same pipeline for every simulated device).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from byzedge.edge_agent.seams import OutgoingMessage, RoundContext, UpdateStage, WireStage
from byzedge.protocol.codecs import CODECS, Codec, CodecContext, build_codec
from byzedge.protocol.envelope import Header, SealedEnvelope, seal
from byzedge.protocol.signing import SigningKey

__all__ = ["PreparedUpdate", "UpdatePipeline", "worker_momentum"]


def worker_momentum(
    previous: NDArray[np.float32] | None, delta: NDArray[np.float32], beta: float
) -> NDArray[np.float32]:
    """Return ``m = β m_prev + (1 - β) Δ`` in float32 (``m_prev = 0`` when ``None``).

    Parameters
    ----------
    previous:
        float32 ``(d,)`` momentum of the previous round the device trained in, or ``None``.
    delta:
        float32 ``(d,)`` trained delta of this round.
    beta:
        ``β`` in ``[0, 1)``.

    Examples
    --------
    >>> import numpy as np
    >>> worker_momentum(None, np.array([1.0, 2.0], np.float32), 0.5)
    array([0.5, 1. ], dtype=float32)
    """
    b = np.float32(beta)
    start = np.zeros_like(delta) if previous is None else previous
    return (b * start + (1 - b) * delta).astype(np.float32)


def _vector_state(vector: NDArray[np.float32] | None) -> bytes | None:
    return None if vector is None else vector.astype("<f4").tobytes()


def _vector_from_state(raw: object, dim: int) -> NDArray[np.float32] | None:
    # Anything but float32 bytes of the model's size (an old state, another model) is
    # dropped: the state restarts from zero, which is what a fresh device does.
    if isinstance(raw, bytes) and len(raw) == 4 * dim:
        return np.frombuffer(raw, dtype="<f4").astype(np.float32)
    return None


@dataclass(frozen=True, slots=True)
class PreparedUpdate:
    """A sealed update, what it cost, and the messages to publish.

    Attributes
    ----------
    envelope, wire_bytes:
        The sealed update and its wire bytes, as the honest pipeline produced them.
    messages:
        What to publish, in order, each on ``update_topic(fleet, message.topic_device)``:
        ``[OutgoingMessage(device_id, wire_bytes)]`` without wire stages.
    sent:
        float32 ``(d,)``: what the coordinator decodes from the body (a training method
        commits its device state with it); ``None`` unless asked for (``method_meta``).
    """

    envelope: SealedEnvelope
    wire_bytes: bytes
    messages: list[OutgoingMessage]
    sent: NDArray[np.float32] | None = None


class UpdatePipeline:
    """Stages, then compression with error feedback, then the signature.

    Parameters
    ----------
    codec_name, sparsity:
        The codec (``compression`` in the config) and its sparsity for sparse codecs.
    support:
        ``rand-k``'s support: ``"device"`` or ``"round"`` (shared by every device of a
        round; training methods ask for it in their plan).
    error_feedback:
        Keep and re-send what a contractive codec dropped (``top-k``, ``top-k-q8``,
        ``float16``'s rounding).
        Unbiased codecs (``rand-k``, ``qsgd``...) are sent without it: their error is
        zero-mean but large (``omega`` up to ``d/K - 1``), and fed back it grows without
        bound (measured: FedAvg with ``rand-k-q8`` at 1% falls to 0.13 accuracy with
        error feedback, 0.98 without; benchmarks/results/compression.md).
    momentum1:
        Worker momentum ``β`` in ``[0, 1)``; 0 (the default) sends the delta itself.
    stages:
        Update stages run first (empty for an honest device; the fault injector's
        attacks otherwise).
    wire_stages:
        Run on the sealed message, in order, each on every message the previous one
        returned (empty for an honest device; protocol-level attacks otherwise).
    """

    def __init__(
        self,
        codec_name: str,
        *,
        sparsity: float = 0.1,
        support: str = "device",
        error_feedback: bool = True,
        momentum1: float = 0.0,
        stages: Sequence[UpdateStage] = (),
        wire_stages: Sequence[WireStage] = (),
    ) -> None:
        if not 0.0 <= momentum1 < 1.0:
            raise ValueError(f"momentum1 must be in [0, 1), got {momentum1!r}")
        codec_type = CODECS.get(codec_name)
        params: dict[str, Any] = {}
        if codec_type is not None and codec_type.sparse:
            params["sparsity"] = sparsity
        if codec_type is not None and codec_type.seeded_support:
            params["support"] = support
        self.codec: Codec = build_codec(codec_name, **params)
        self._dense: Codec = build_codec("dense")
        # float16's rounding is fed back too (tiny, and contractive); dense loses nothing.
        self._error_feedback = (
            error_feedback and codec_name != "dense" and self.codec.compressor_class != "unbiased"
        )
        self.momentum1 = momentum1
        self._stages = list(stages)
        self._wire_stages = list(wire_stages)
        self.residual: NDArray[np.float32] | None = None
        self.momentum: NDArray[np.float32] | None = None

    def state_dict(self) -> dict[str, Any]:
        """The device-side state as plain values: float32 bytes or ``None`` per vector.

        ``{"residual": ..., "momentum": ...}``: the error-feedback residual and the worker
        momentum. The agent keeps this in its state file (msgpack, never pickle).
        """
        return {"residual": _vector_state(self.residual), "momentum": _vector_state(self.momentum)}

    def load_state_dict(self, state: Mapping[str, Any], dim: int) -> None:
        """Restore :meth:`state_dict` for a model of ``dim`` parameters.

        A vector of another size (the fleet changed model) or of another type is dropped
        and starts from zero again, as on a new device.
        """
        self.residual = _vector_from_state(state.get("residual"), dim)
        self.momentum = _vector_from_state(state.get("momentum"), dim)

    def momentum_step(self, delta: NDArray[np.float32]) -> NDArray[np.float32]:
        """Fold this round's trained ``delta`` into the momentum; return what is sent.

        That is ``m`` (the updated momentum) when ``momentum1 > 0``, else ``delta``: the
        honest update, before any attack stage. :meth:`prepare` calls it first; a
        simulation that must show the honest updates to colluding attackers before
        anything is sent calls it itself and then ``prepare(..., momentum_applied=True)``.
        """
        if self.momentum1 == 0:
            return delta
        vector = np.asarray(delta, dtype=np.float32)
        previous = self.momentum
        if previous is not None and previous.shape != vector.shape:
            previous = None  # the model changed shape: the old momentum is meaningless
        self.momentum = worker_momentum(previous, vector, self.momentum1)
        return self.momentum

    def prepare(
        self,
        delta: NDArray[np.float32],
        context: RoundContext,
        *,
        key: SigningKey,
        fleet: str,
        base_version: int,
        counter: int,
        ttl_s: float = 600.0,
        momentum_applied: bool = False,
        method_meta: Mapping[str, Any] | None = None,
        dense: bool = False,
    ) -> PreparedUpdate:
        """Apply momentum, run the stages, compress, sign, run the wire stages.

        Updates the device-side state: the momentum (when ``momentum1 > 0``) and the
        error-feedback residual. With ``momentum_applied``, ``delta`` is already what
        :meth:`momentum_step` returned (or a vector to send as is, such as a colluding
        attacker's) and the momentum is left alone.

        A training method's message (:mod:`byzedge.methods`) passes ``method_meta`` (its
        kind and base round, carried in the header's ``meta["method"]``) and ``dense``
        for a message that must travel losslessly (a full gradient, a reset); the result
        then holds ``sent``, what the coordinator will decode. Methods carry their own
        error feedback, so the pipeline's is not applied to their messages.
        """
        if method_meta is not None:
            return self._prepare_method_message(
                delta,
                context,
                key=key,
                fleet=fleet,
                base_version=base_version,
                counter=counter,
                ttl_s=ttl_s,
                method_meta=method_meta,
                dense=dense,
            )
        update = delta if momentum_applied else self.momentum_step(delta)
        for stage in self._stages:
            update = stage(update, context)
        update = np.asarray(update, dtype=np.float32)
        if self._error_feedback and self.residual is not None:
            if self.residual.shape == update.shape:
                update = update + self.residual
            else:  # the model changed shape: old residual is meaningless
                self.residual = None
        # What both ends know from the header: rand-k derives its support from it.
        codec_context = CodecContext(fleet, context.round, context.device_id)
        body = self.codec.encode(update, context=codec_context)
        if self._error_feedback:
            sent = self.codec.decode(body, update.shape[0], context=codec_context)
            # Non-finite values (a broken stage) must not poison every later round.
            self.residual = np.nan_to_num(update - sent, nan=0.0, posinf=0.0, neginf=0.0)
        created_ms = int(time.time() * 1000)
        header = Header(
            kind="update",
            fleet=fleet,
            sender=context.device_id,
            round=context.round,
            base_version=base_version,
            codec=self.codec.name,
            dim=int(update.shape[0]),
            counter=counter,
            created_ms=created_ms,
            expires_ms=created_ms + int(ttl_s * 1000),
        )
        envelope = seal(header, body, key)
        wire_bytes = envelope.to_bytes()
        messages = [OutgoingMessage(context.device_id, wire_bytes)]
        for wire_stage in self._wire_stages:
            messages = [out for message in messages for out in wire_stage(message, context)]
        return PreparedUpdate(envelope=envelope, wire_bytes=wire_bytes, messages=messages)

    def _prepare_method_message(
        self,
        vector: NDArray[np.float32],
        context: RoundContext,
        *,
        key: SigningKey,
        fleet: str,
        base_version: int,
        counter: int,
        ttl_s: float,
        method_meta: Mapping[str, Any],
        dense: bool,
    ) -> PreparedUpdate:
        update = np.asarray(vector, dtype=np.float32)
        for stage in self._stages:
            update = stage(update, context)
        update = np.asarray(update, dtype=np.float32)
        codec = self._dense if dense else self.codec
        codec_context = CodecContext(fleet, context.round, context.device_id)
        body = codec.encode(update, context=codec_context)
        sent = codec.decode(body, update.shape[0], context=codec_context)
        created_ms = int(time.time() * 1000)
        header = Header(
            kind="update",
            fleet=fleet,
            sender=context.device_id,
            round=context.round,
            base_version=base_version,
            codec=codec.name,
            dim=int(update.shape[0]),
            counter=counter,
            created_ms=created_ms,
            expires_ms=created_ms + int(ttl_s * 1000),
            meta={"method": dict(method_meta)},
        )
        envelope = seal(header, body, key)
        wire_bytes = envelope.to_bytes()
        messages = [OutgoingMessage(context.device_id, wire_bytes)]
        for wire_stage in self._wire_stages:
            messages = [out for message in messages for out in wire_stage(message, context)]
        return PreparedUpdate(
            envelope=envelope, wire_bytes=wire_bytes, messages=messages, sent=sent
        )
