"""Protocol-level attacks run as wire stages and the real Ingest refuses each for its reason."""

from __future__ import annotations

import time

import numpy as np
import pytest

from byzedge.coordinator.devices import DeviceRegistry
from byzedge.coordinator.ingest import Accepted, Ingest, Rejected, RejectReason, RoundWindow
from byzedge.edge_agent.pipeline import PreparedUpdate, UpdatePipeline
from byzedge.edge_agent.seams import OutgoingMessage, RoundContext
from byzedge.faults import BadSignature, FaultInjector, GarbagePayload, Sybil
from byzedge.faults.attacks import sybil_id
from byzedge.protocol.envelope import open_envelope
from byzedge.protocol.signing import SigningKey
from byzedge.protocol.topics import update_topic

FLEET = "fleet-w"
DEVICE = "dev-a"
DIM = 16
ROUND = 2
VERSION = 1
KEY = SigningKey.generate()


def ingest() -> Ingest:
    return Ingest(
        FLEET,
        DeviceRegistry({DEVICE: KEY.verify_key}),
        max_message_bytes=128 * 1024,
        max_update_bytes=1 << 20,
    )


def window() -> RoundWindow:
    return RoundWindow(round=ROUND, model_version=VERSION, dim=DIM)


def prepare(*wire_stages: object, counter: int = 1) -> PreparedUpdate:
    pipeline = UpdatePipeline("dense", wire_stages=list(wire_stages))  # type: ignore[arg-type]
    context = RoundContext(DEVICE, ROUND, np.zeros(DIM, np.float32), np.random.default_rng(0))
    return pipeline.prepare(
        np.linspace(-1, 1, DIM, dtype=np.float32),
        context,
        key=KEY,
        fleet=FLEET,
        base_version=VERSION,
        counter=counter + time.time_ns() // 1000,
    )


def submit_all(prepared: PreparedUpdate) -> list[Accepted | Rejected | None]:
    gate = ingest()
    return [
        gate.submit(update_topic(FLEET, m.topic_device), m.payload, window())
        for m in prepared.messages
    ]


def test_honest_pipeline_sends_one_message_that_is_accepted() -> None:
    prepared = prepare()
    assert prepared.messages == [OutgoingMessage(DEVICE, prepared.wire_bytes)]
    (outcome,) = submit_all(prepared)
    assert isinstance(outcome, Accepted)


def test_garbage_payload_keeps_length_and_is_rejected_as_malformed() -> None:
    prepared = prepare(GarbagePayload(seed=1))
    (message,) = prepared.messages
    assert len(message.payload) == len(prepared.wire_bytes)
    assert message.payload != prepared.wire_bytes
    (outcome,) = submit_all(prepared)
    assert isinstance(outcome, Rejected)
    assert outcome.reason is RejectReason.MALFORMED


@pytest.mark.parametrize("mode", ["flip", "wrong-key"])
def test_bad_signature_is_rejected_as_bad_signature(mode: str) -> None:
    prepared = prepare(BadSignature(mode=mode, seed=2))  # type: ignore[arg-type]
    (message,) = prepared.messages
    sent = open_envelope(message.payload, 1 << 20)
    assert sent.body == prepared.envelope.body  # only the signature is broken
    (outcome,) = submit_all(prepared)
    assert isinstance(outcome, Rejected)
    assert outcome.reason is RejectReason.BAD_SIGNATURE


def test_sybils_are_rejected_as_unknown_devices_and_the_real_update_is_kept() -> None:
    prepared = prepare(Sybil(count=3, seed=3))
    assert [m.topic_device for m in prepared.messages] == [
        DEVICE,
        *(sybil_id(DEVICE, k) for k in range(3)),
    ]
    outcomes = submit_all(prepared)
    assert isinstance(outcomes[0], Accepted)
    for outcome in outcomes[1:]:
        assert isinstance(outcome, Rejected)
        assert outcome.reason is RejectReason.UNKNOWN_DEVICE


def test_sybil_messages_are_validly_signed_by_their_own_keys() -> None:
    stage = Sybil(count=2, seed=3)
    prepared = prepare(stage)
    for index, message in enumerate(prepared.messages[1:]):
        envelope = open_envelope(message.payload, 1 << 20)
        assert envelope.header.sender == message.topic_device
        envelope.verify(stage.key(index).verify_key)  # raises if not


def test_sybil_ids_stay_valid_topic_levels() -> None:
    long_id = "d" * 64
    assert len(sybil_id(long_id, 12)) == 64
    assert sybil_id(long_id, 12).endswith("-sybil-12")


def test_wire_stage_waits_for_its_start_round() -> None:
    stage = GarbagePayload(start_round=ROUND + 1)
    prepared = prepare(stage)
    assert prepared.messages == [OutgoingMessage(DEVICE, prepared.wire_bytes)]


def test_injector_hands_wire_attacks_to_the_wire_seam_only() -> None:
    injector = FaultInjector([{"name": "sybil"}, {"name": "bad-signature"}])
    assert injector.update_stages() == []
    assert [type(s) for s in injector.wire_stages()] == [Sybil, BadSignature]
    assert injector.is_malicious
