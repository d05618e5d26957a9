"""From a trained delta to signed MQTT bytes: stages -> compress (EF) -> seal -> wire stages.

Error feedback (Seide et al. 2014; Karimireddy et al. ICML 2019): with a lossy codec ``C``
the device sends ``C(p)`` where ``p = u + e`` and keeps ``e <- p - decode(C(p))``, so what
compression drops this round is sent in a later one instead of being lost.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from byzedge.edge_agent.seams import OutgoingMessage, RoundContext, UpdateStage, WireStage
from byzedge.protocol.codecs import Codec, build_codec
from byzedge.protocol.envelope import Header, SealedEnvelope, seal
from byzedge.protocol.signing import SigningKey

__all__ = ["PreparedUpdate", "UpdatePipeline"]


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
    """

    envelope: SealedEnvelope
    wire_bytes: bytes
    messages: list[OutgoingMessage]


class UpdatePipeline:
    """Stages, then compression with error feedback, then the signature.

    Parameters
    ----------
    codec_name, sparsity:
        The codec (``compression`` in the config) and its sparsity for ``top-k``.
    error_feedback:
        Keep and re-send what a lossy codec dropped.
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
        error_feedback: bool = True,
        stages: Sequence[UpdateStage] = (),
        wire_stages: Sequence[WireStage] = (),
    ) -> None:
        params = {"sparsity": sparsity} if codec_name == "top-k" else {}
        self.codec: Codec = build_codec(codec_name, **params)
        self._error_feedback = error_feedback and codec_name != "dense"
        self._stages = list(stages)
        self._wire_stages = list(wire_stages)
        self.residual: NDArray[np.float32] | None = None

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
    ) -> PreparedUpdate:
        """Run the stages, compress, sign, run the wire stages; update the EF residual."""
        update = delta
        for stage in self._stages:
            update = stage(update, context)
        update = np.asarray(update, dtype=np.float32)
        if self._error_feedback and self.residual is not None:
            if self.residual.shape == update.shape:
                update = update + self.residual
            else:  # the model changed shape: old residual is meaningless
                self.residual = None
        body = self.codec.encode(update)
        if self._error_feedback:
            sent = self.codec.decode(body, update.shape[0])
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
