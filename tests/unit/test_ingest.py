"""Coordinator ingest: every message becomes Accepted or Rejected(reason), never an exception.

Updates are sealed with real Ed25519 keys and fed to :class:`Ingest` directly (no broker).
The clock is fixed, so expiry is decided by the headers these tests write.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from byzedge.coordinator.devices import DeviceRegistry
from byzedge.coordinator.ingest import (
    Accepted,
    Ingest,
    Redelivered,
    Rejected,
    RejectReason,
    RoundWindow,
)
from byzedge.edge_agent.pipeline import UpdatePipeline
from byzedge.edge_agent.seams import RoundContext
from byzedge.protocol.chunking import split_payload
from byzedge.protocol.codecs import DenseCodec
from byzedge.protocol.envelope import Header, SealedEnvelope, seal
from byzedge.protocol.signing import SigningKey
from byzedge.protocol.topics import update_topic

FLEET = "fleet-a"
DIM = 16
ROUND = 3
VERSION = 2
NOW_MS = 1_700_000_000_000
MAX_MESSAGE = 128 * 1024
MAX_UPDATE = 1 << 20
TTL_MS = 600_000

KEY_A = SigningKey.generate()
KEY_B = SigningKey.generate()
SYBIL = SigningKey.generate()
WINDOW = RoundWindow(round=ROUND, model_version=VERSION, dim=DIM)


def make_ingest(max_message_bytes: int = MAX_MESSAGE) -> Ingest:
    return Ingest(
        FLEET,
        DeviceRegistry({"dev-a": KEY_A.verify_key, "dev-b": KEY_B.verify_key}),
        max_message_bytes=max_message_bytes,
        max_update_bytes=MAX_UPDATE,
        update_ttl_s=TTL_MS / 1000,
        clock=lambda: NOW_MS / 1000,
    )


def vector(dim: int = DIM) -> NDArray[np.float32]:
    return np.linspace(-1.0, 1.0, dim, dtype=np.float32)


def header(**changes: Any) -> Header:
    fields: dict[str, Any] = {
        "kind": "update",
        "fleet": FLEET,
        "sender": "dev-a",
        "round": ROUND,
        "base_version": VERSION,
        "codec": "dense",
        "dim": DIM,
        "counter": 10,
        "created_ms": NOW_MS - 1_000,
        "expires_ms": NOW_MS + 60_000,
    }
    fields.update(changes)
    return Header(**fields)


def sealed(key: SigningKey = KEY_A, body: bytes | None = None, **changes: Any) -> SealedEnvelope:
    if body is None:
        body = DenseCodec().encode(vector(changes.get("dim", DIM)))
    return seal(header(**changes), body, key)


def frame(key: SigningKey = KEY_A, body: bytes | None = None, **changes: Any) -> bytes:
    return sealed(key, body, **changes).to_bytes()


def topic(device: str = "dev-a") -> str:
    return update_topic(FLEET, device)


def rejection(outcome: Accepted | Rejected | Redelivered | None) -> RejectReason:
    assert isinstance(outcome, Rejected), outcome
    return outcome.reason


# -- accepted ---------------------------------------------------------------------------


def test_a_valid_update_is_accepted_with_the_vector_that_was_sent() -> None:
    sent = np.array([0.5, -2.0, 3.25, 0.0] * 4, dtype=np.float32)
    context = RoundContext(
        device_id="dev-a",
        round=ROUND,
        global_params=np.zeros(DIM, np.float32),
        rng=np.random.default_rng(0),
    )
    prepared = UpdatePipeline("dense").prepare(
        sent, context, key=KEY_A, fleet=FLEET, base_version=VERSION, counter=7
    )
    ingest = Ingest(
        FLEET,
        DeviceRegistry({"dev-a": KEY_A.verify_key}),
        max_message_bytes=MAX_MESSAGE,
        max_update_bytes=MAX_UPDATE,
    )

    outcome = ingest.submit(topic(), prepared.wire_bytes, WINDOW)

    assert isinstance(outcome, Accepted)
    assert outcome.device_id == "dev-a"
    assert outcome.header.counter == 7
    assert outcome.wire_bytes == len(prepared.wire_bytes)
    assert outcome.body_bytes == 4 * DIM
    np.testing.assert_array_equal(outcome.update, sent)


def test_a_chunked_update_is_reassembled_and_accepted() -> None:
    dim = 2_000
    sent = vector(dim)
    wire = frame(dim=dim)
    chunks = split_payload(wire, 1_024)
    assert len(chunks) > 5
    ingest = make_ingest(max_message_bytes=1_024)
    window = dataclasses.replace(WINDOW, dim=dim)

    outcomes = [ingest.submit(topic(), chunk, window) for chunk in chunks]

    assert outcomes[:-1] == [None] * (len(chunks) - 1)
    final = outcomes[-1]
    assert isinstance(final, Accepted)
    assert final.wire_bytes == len(wire)
    np.testing.assert_array_equal(final.update, sent)


def test_each_device_gets_one_accepted_update_per_round_and_again_next_round() -> None:
    ingest = make_ingest()
    assert isinstance(ingest.submit(topic(), frame(counter=1), WINDOW), Accepted)
    next_window = dataclasses.replace(WINDOW, round=ROUND + 1)

    outcome = ingest.submit(topic(), frame(counter=2, round=ROUND + 1), next_window)

    assert isinstance(outcome, Accepted)


# -- topic, size, framing ----------------------------------------------------------------


def test_an_update_on_another_fleets_topic_is_wrong_topic() -> None:
    outcome = make_ingest().submit(update_topic("fleet-b", "dev-a"), frame(), WINDOW)

    assert rejection(outcome) is RejectReason.WRONG_TOPIC
    assert isinstance(outcome, Rejected)
    assert outcome.device_id is None


def test_an_update_whose_sender_differs_from_the_topic_device_is_wrong_topic() -> None:
    # Correctly signed by dev-a, but published on dev-b's topic.
    outcome = make_ingest().submit(topic("dev-b"), frame(), WINDOW)

    assert rejection(outcome) is RejectReason.WRONG_TOPIC


def test_an_update_whose_header_names_another_fleet_is_wrong_topic() -> None:
    outcome = make_ingest().submit(topic(), frame(fleet="fleet-b"), WINDOW)

    assert rejection(outcome) is RejectReason.WRONG_TOPIC


def test_a_model_message_on_an_update_topic_is_wrong_topic() -> None:
    outcome = make_ingest().submit(topic(), frame(kind="model"), WINDOW)

    assert rejection(outcome) is RejectReason.WRONG_TOPIC


def test_a_frame_over_max_message_bytes_is_oversize() -> None:
    ingest = make_ingest(max_message_bytes=4_096)

    outcome = ingest.submit(topic(), frame(dim=2_000), dataclasses.replace(WINDOW, dim=2_000))

    assert rejection(outcome) is RejectReason.OVERSIZE


def test_a_chunk_announcing_more_than_max_update_bytes_is_oversize() -> None:
    chunk = b"BZC1" + msgpack.packb(
        {
            "id": b"\x01" * 16,
            "i": 0,
            "n": 2,
            "size": MAX_UPDATE + 1,
            "sha256": b"\x00" * 32,
            "data": b"x",
        },
        use_bin_type=True,
    )

    outcome = make_ingest().submit(topic(), chunk, WINDOW)

    assert rejection(outcome) is RejectReason.OVERSIZE


def test_a_chunk_frame_holding_garbage_is_bad_chunk() -> None:
    outcome = make_ingest().submit(topic(), b"BZC1\xc1\xff\x00garbage", WINDOW)

    assert rejection(outcome) is RejectReason.BAD_CHUNK


def test_chunks_whose_reassembly_fails_the_digest_are_bad_chunk() -> None:
    chunks = split_payload(frame(dim=2_000), 1_024)
    last = msgpack.unpackb(chunks[-1][4:], raw=False)
    last["data"] = bytes(len(last["data"]))  # same size, other bytes
    chunks[-1] = b"BZC1" + msgpack.packb(last, use_bin_type=True)
    ingest = make_ingest(max_message_bytes=1_024)
    window = dataclasses.replace(WINDOW, dim=2_000)

    outcomes = [ingest.submit(topic(), chunk, window) for chunk in chunks]

    assert rejection(outcomes[-1]) is RejectReason.BAD_CHUNK


def test_garbage_bytes_are_malformed() -> None:
    outcome = make_ingest().submit(topic(), b"\x00\x01not an envelope at all", WINDOW)

    assert rejection(outcome) is RejectReason.MALFORMED


def test_a_truncated_envelope_is_malformed() -> None:
    wire = frame()

    outcome = make_ingest().submit(topic(), wire[: len(wire) // 2], WINDOW)

    assert rejection(outcome) is RejectReason.MALFORMED


# -- identity and signature --------------------------------------------------------------


def test_an_update_from_an_unenrolled_device_is_unknown_device() -> None:
    outcome = make_ingest().submit(topic("dev-z"), frame(SYBIL, sender="dev-z"), WINDOW)

    assert rejection(outcome) is RejectReason.UNKNOWN_DEVICE


def test_one_flipped_byte_in_the_body_is_bad_signature() -> None:
    envelope = sealed()
    wire = bytearray(envelope.to_bytes())
    offset = bytes(wire).index(envelope.body) + 5
    wire[offset] ^= 0x01

    outcome = make_ingest().submit(topic(), bytes(wire), WINDOW)

    assert rejection(outcome) is RejectReason.BAD_SIGNATURE


def test_an_update_for_device_a_signed_by_device_b_is_bad_signature() -> None:
    outcome = make_ingest().submit(topic(), frame(KEY_B), WINDOW)

    assert rejection(outcome) is RejectReason.BAD_SIGNATURE


def test_b_signature_presented_under_a_key_id_is_bad_signature() -> None:
    # The envelope names dev-a's key, so only the Ed25519 check itself can catch it.
    by_b = sealed(KEY_B)
    forged = dataclasses.replace(by_b, key_id=KEY_A.key_id)

    outcome = make_ingest().submit(topic(), forged.to_bytes(), WINDOW)

    assert rejection(outcome) is RejectReason.BAD_SIGNATURE


def test_an_envelope_naming_another_signature_algorithm_is_bad_signature() -> None:
    raw = msgpack.unpackb(frame()[4:], raw=False)
    raw["alg"] = "rsa"

    outcome = make_ingest().submit(topic(), b"BZE1" + msgpack.packb(raw), WINDOW)

    assert rejection(outcome) is RejectReason.BAD_SIGNATURE


def test_a_rejected_forgery_does_not_burn_the_devices_counter() -> None:
    ingest = make_ingest()
    assert rejection(ingest.submit(topic(), frame(KEY_B, counter=99), WINDOW)) is (
        RejectReason.BAD_SIGNATURE
    )

    outcome = ingest.submit(topic(), frame(counter=5), WINDOW)

    assert isinstance(outcome, Accepted)


# -- freshness -----------------------------------------------------------------------------


def test_a_copy_of_an_accepted_update_is_redelivered_not_rejected() -> None:
    ingest = make_ingest()
    wire = frame()
    assert isinstance(ingest.submit(topic(), wire, WINDOW), Accepted)

    outcome = ingest.submit(topic(), wire, WINDOW)

    assert outcome == Redelivered("dev-a", ROUND)


def test_a_copy_arriving_in_the_next_round_is_still_redelivered() -> None:
    ingest = make_ingest()
    wire = frame()
    assert isinstance(ingest.submit(topic(), wire, WINDOW), Accepted)
    next_window = dataclasses.replace(WINDOW, round=ROUND + 1)

    outcome = ingest.submit(topic(), wire, next_window)

    assert isinstance(outcome, Redelivered)


def test_a_copy_arriving_two_rounds_later_is_a_replay() -> None:
    ingest = make_ingest()
    wire = frame()
    assert isinstance(ingest.submit(topic(), wire, WINDOW), Accepted)
    ingest.submit(topic(), frame(counter=11, round=ROUND + 1), replace_round(1))

    outcome = ingest.submit(topic(), wire, replace_round(2))

    assert rejection(outcome) is RejectReason.REPLAY


def test_an_update_early_for_its_round_is_judged_again_and_taken_once_the_round_opens() -> None:
    # An ingest worker may see a device's next-round update before the round's context:
    # refusing it must not burn its nonce, or the device's re-send would be a "replay".
    ingest = make_ingest()
    wire = frame(round=ROUND + 1)
    assert rejection(ingest.submit(topic(), wire, WINDOW)) is RejectReason.WRONG_ROUND
    assert rejection(ingest.submit(topic(), wire, WINDOW)) is RejectReason.WRONG_ROUND

    taken = ingest.submit(topic(), wire, replace_round(1))

    assert isinstance(taken, Accepted)
    assert isinstance(ingest.submit(topic(), wire, replace_round(1)), Redelivered)


def test_a_copy_of_an_accepted_update_from_an_older_round_is_a_replay() -> None:
    ingest = make_ingest()
    wire = frame()
    assert isinstance(ingest.submit(topic(), wire, WINDOW), Accepted)
    for offset in (1, 2):  # Redelivered for one round after, a replay from then on
        ingest.submit(
            topic(), frame(round=ROUND + offset, counter=20 + offset), replace_round(offset)
        )

    assert rejection(ingest.submit(topic(), wire, replace_round(2))) is RejectReason.REPLAY


def test_a_journaled_payload_is_checked_like_a_message() -> None:
    ingest = make_ingest()
    wire = frame()

    accepted = ingest.submit_payload("dev-a", wire, WINDOW)
    forged = ingest.submit_payload("dev-b", frame(counter=12), WINDOW)

    assert isinstance(accepted, Accepted)
    assert accepted.payload == wire
    assert rejection(forged) is RejectReason.WRONG_TOPIC


def replace_round(offset: int) -> RoundWindow:
    return dataclasses.replace(WINDOW, round=ROUND + offset)


def test_a_counter_not_above_the_last_accepted_one_is_a_replay() -> None:
    ingest = make_ingest()
    assert isinstance(ingest.submit(topic(), frame(counter=10), WINDOW), Accepted)
    next_window = dataclasses.replace(WINDOW, round=ROUND + 1)

    outcome = ingest.submit(topic(), frame(counter=9, round=ROUND + 1), next_window)

    assert rejection(outcome) is RejectReason.REPLAY


def test_replay_counters_survive_state_dict_and_load_state_dict() -> None:
    before = make_ingest()
    wire = frame(counter=10)
    assert isinstance(before.submit(topic(), wire, WINDOW), Accepted)
    # The coordinator stores this state as msgpack: round-trip it the same way.
    stored = msgpack.unpackb(msgpack.packb(before.state_dict()), raw=False)

    after = make_ingest()
    after.load_state_dict(stored)
    outcome = after.submit(topic(), wire, WINDOW)

    assert rejection(outcome) is RejectReason.REPLAY


def test_without_restored_state_a_restarted_ingest_would_accept_the_replay() -> None:
    # The control for the test above: the counter state is what stops the replay.
    wire = frame(counter=10)
    assert isinstance(make_ingest().submit(topic(), wire, WINDOW), Accepted)

    assert isinstance(make_ingest().submit(topic(), wire, WINDOW), Accepted)


def test_an_update_for_another_round_is_wrong_round() -> None:
    outcome = make_ingest().submit(topic(), frame(round=ROUND - 1), WINDOW)

    assert rejection(outcome) is RejectReason.WRONG_ROUND


def test_an_update_trained_from_another_model_version_is_stale_model() -> None:
    outcome = make_ingest().submit(topic(), frame(base_version=VERSION - 1), WINDOW)

    assert rejection(outcome) is RejectReason.STALE_MODEL


def test_an_update_past_its_expiry_is_expired() -> None:
    outcome = make_ingest().submit(
        topic(), frame(created_ms=NOW_MS - 5_000, expires_ms=NOW_MS - 1), WINDOW
    )

    assert rejection(outcome) is RejectReason.EXPIRED


def test_an_update_older_than_the_ttl_is_expired_even_without_an_expiry() -> None:
    outcome = make_ingest().submit(
        topic(), frame(created_ms=NOW_MS - TTL_MS - 1, expires_ms=0), WINDOW
    )

    assert rejection(outcome) is RejectReason.EXPIRED


def test_an_update_from_a_device_outside_the_cohort_is_not_in_cohort() -> None:
    window = dataclasses.replace(WINDOW, cohort=frozenset({"dev-b"}))

    outcome = make_ingest().submit(topic(), frame(), window)

    assert rejection(outcome) is RejectReason.NOT_IN_COHORT


def test_a_second_fresh_update_in_the_same_round_is_duplicate() -> None:
    ingest = make_ingest()
    assert isinstance(ingest.submit(topic(), frame(counter=1), WINDOW), Accepted)

    outcome = ingest.submit(topic(), frame(counter=2), WINDOW)

    assert rejection(outcome) is RejectReason.DUPLICATE


# -- body ----------------------------------------------------------------------------------


def test_an_unregistered_codec_is_unknown_codec_and_attributable() -> None:
    outcome = make_ingest().submit(topic(), frame(codec="zstd-magic"), WINDOW)

    assert rejection(outcome) is RejectReason.UNKNOWN_CODEC
    assert isinstance(outcome, Rejected)
    assert outcome.attributable


def test_an_update_of_another_dimension_is_wrong_shape() -> None:
    outcome = make_ingest().submit(topic(), frame(dim=DIM + 1), WINDOW)

    assert rejection(outcome) is RejectReason.WRONG_SHAPE


def test_a_body_that_does_not_decode_to_dim_values_is_bad_body() -> None:
    outcome = make_ingest().submit(topic(), frame(body=b"\x00" * (4 * DIM - 2)), WINDOW)

    assert rejection(outcome) is RejectReason.BAD_BODY


def test_a_signed_dense_update_holding_nan_is_non_finite() -> None:
    poisoned = vector()
    poisoned[[1, 4]] = np.nan
    poisoned[7] = np.inf
    body = DenseCodec().encode(poisoned)

    outcome = make_ingest().submit(topic(), frame(body=body), WINDOW)

    assert rejection(outcome) is RejectReason.NON_FINITE
    assert isinstance(outcome, Rejected)
    assert outcome.attributable
    assert outcome.detail.startswith("3 ")


def test_a_non_finite_update_does_not_use_up_the_devices_round() -> None:
    ingest = make_ingest()
    body = DenseCodec().encode(np.full(DIM, math.nan, dtype=np.float32))
    assert rejection(ingest.submit(topic(), frame(body=body, counter=1), WINDOW)) is (
        RejectReason.NON_FINITE
    )

    outcome = ingest.submit(topic(), frame(counter=2), WINDOW)

    assert isinstance(outcome, Accepted)


# -- properties ----------------------------------------------------------------------------

VALID_WIRE = frame(counter=1)
_prefixed = st.sampled_from([b"", b"BZE1", b"BZC1"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=_prefixed, data=st.binary(max_size=2_048))
def test_arbitrary_bytes_on_a_valid_topic_never_raise(prefix: bytes, data: bytes) -> None:
    outcome = make_ingest().submit(topic(), prefix + data, WINDOW)

    assert outcome is None or isinstance(outcome, Rejected)


@settings(max_examples=300, deadline=None)
@given(position=st.integers(0, len(VALID_WIRE) - 1), mask=st.integers(1, 255))
def test_a_valid_update_with_any_byte_changed_is_never_accepted(position: int, mask: int) -> None:
    wire = bytearray(VALID_WIRE)
    wire[position] ^= mask

    outcome = make_ingest().submit(topic(), bytes(wire), WINDOW)

    assert isinstance(outcome, Rejected)


@pytest.mark.parametrize("cut", [0, 1, 4, 5, 20, -65, -1])
def test_a_valid_update_cut_short_anywhere_is_rejected(cut: int) -> None:
    outcome = make_ingest().submit(topic(), VALID_WIRE[:cut], WINDOW)

    assert isinstance(outcome, Rejected)


def test_enrolment_skips_files_named_after_reserved_broker_accounts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("dev-1", "coordinator", "monitor"):
        (tmp_path / f"{name}.pub").write_bytes(SigningKey.generate().verify_key.to_pem())

    registry = DeviceRegistry.load(tmp_path)

    assert list(registry) == ["dev-1"]
    assert "reserved" in caplog.text
