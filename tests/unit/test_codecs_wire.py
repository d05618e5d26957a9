"""The new codecs end to end: agent config, pipeline error feedback, coordinator ingest.

Updates are sealed by the real :class:`UpdatePipeline` and fed to :class:`Ingest`, so the
codec context (fleet, round, sender) is the one both daemons derive from the header.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from byzedge.coordinator.devices import DeviceRegistry
from byzedge.coordinator.ingest import (
    ATTRIBUTABLE,
    Accepted,
    Ingest,
    Rejected,
    RejectReason,
    RoundWindow,
)
from byzedge.edge_agent.config import load_agent_config
from byzedge.edge_agent.pipeline import UpdatePipeline
from byzedge.edge_agent.seams import RoundContext
from byzedge.protocol.codecs import CODECS, CodecContext, RandKCodec
from byzedge.protocol.envelope import Header, open_envelope, seal
from byzedge.protocol.signing import SigningKey
from byzedge.protocol.topics import update_topic

FLEET = "fleet-a"
DEVICE = "dev-a"
DIM = 400
KEY = SigningKey.generate()
NEW_CODECS = ["top-k-q8", "rand-k", "rand-k-q8", "natural", "qsgd"]
# Error feedback runs for contractive codecs only; unbiased ones diverge with it.
FED_BACK = [name for name in NEW_CODECS if CODECS[name].compressor_class == "contractive"]
UNBIASED = [name for name in NEW_CODECS if CODECS[name].compressor_class == "unbiased"]


def context(round_number: int) -> RoundContext:
    return RoundContext(
        device_id=DEVICE,
        round=round_number,
        global_params=np.zeros(DIM, dtype=np.float32),
        rng=np.random.default_rng(0),
    )


def delta(seed: int = 0) -> NDArray[np.float32]:
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


def make_ingest() -> Ingest:
    return Ingest(
        FLEET,
        DeviceRegistry({DEVICE: KEY.verify_key}),
        max_message_bytes=128 * 1024,
        max_update_bytes=1 << 20,
    )


def received(pipeline: UpdatePipeline, round_number: int, counter: int) -> NDArray[np.float32]:
    prepared = pipeline.prepare(
        delta(round_number),
        context(round_number),
        key=KEY,
        fleet=FLEET,
        base_version=round_number,
        counter=counter,
    )
    window = RoundWindow(round=round_number, model_version=round_number, dim=DIM)
    outcome = make_ingest().submit(update_topic(FLEET, DEVICE), prepared.wire_bytes, window)
    assert isinstance(outcome, Accepted), outcome
    return outcome.update


@pytest.mark.parametrize("name", NEW_CODECS)
def test_the_agent_config_accepts_the_new_codec_names(tmp_path: Path, name: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        'fleet = "plant-7"\ndevice_id = "dev-004"\nsigning_key = "k"\n'
        f'coordinator_key = "c"\nstate_dir = "s"\ncompression = "{name}"\nsparsity = 0.01\n',
        encoding="utf-8",
    )

    assert load_agent_config(path).compression == name


@pytest.mark.parametrize("name", NEW_CODECS)
def test_the_pipeline_builds_sparse_codecs_with_the_configured_sparsity(name: str) -> None:
    pipeline = UpdatePipeline(name, sparsity=0.02)

    assert pipeline.codec.name == name
    assert getattr(pipeline.codec, "sparsity", 0.02) == 0.02


@pytest.mark.parametrize("name", FED_BACK)
def test_ingest_decodes_what_the_pipeline_sent_and_the_residual_is_the_rest(name: str) -> None:
    pipeline = UpdatePipeline(name, sparsity=0.05)
    decoded = received(pipeline, round_number=4, counter=1)

    assert pipeline.residual is not None
    np.testing.assert_allclose(decoded + pipeline.residual, delta(4), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", UNBIASED)
def test_unbiased_codecs_are_sent_without_error_feedback(name: str) -> None:
    pipeline = UpdatePipeline(name, sparsity=0.05)  # error_feedback=True, the default
    received(pipeline, round_number=4, counter=1)
    received(pipeline, round_number=5, counter=2)

    assert pipeline.residual is None


@pytest.mark.parametrize("name", FED_BACK)
def test_error_feedback_adds_last_rounds_residual_to_this_rounds_update(name: str) -> None:
    pipeline = UpdatePipeline(name, sparsity=0.05)
    received(pipeline, round_number=4, counter=1)
    residual = pipeline.residual
    assert residual is not None
    decoded = received(pipeline, round_number=5, counter=2)

    # What round 5 sent plus what it kept back is round 5's delta plus round 4's residual.
    assert pipeline.residual is not None
    np.testing.assert_allclose(decoded + pipeline.residual, delta(5) + residual, rtol=0, atol=1e-4)


def test_a_rand_k_update_on_another_rounds_support_is_rejected_with_its_own_reason() -> None:
    round_number = 9
    wrong = CodecContext(FLEET, round_number - 1, DEVICE)
    body = RandKCodec(0.05).encode(delta(), context=wrong)
    now_ms = int(time.time() * 1000)
    header = Header(
        kind="update",
        fleet=FLEET,
        sender=DEVICE,
        round=round_number,
        base_version=1,
        codec="rand-k",
        dim=DIM,
        counter=1,
        created_ms=now_ms,
        expires_ms=now_ms + 60_000,
    )
    payload = seal(header, body, KEY).to_bytes()
    window = RoundWindow(round=round_number, model_version=1, dim=DIM)

    outcome = make_ingest().submit(update_topic(FLEET, DEVICE), payload, window)

    assert isinstance(outcome, Rejected)
    assert outcome.reason is RejectReason.RANDK_SUPPORT_MISMATCH
    assert outcome.reason.value == "randk-support-mismatch"
    assert outcome.attributable
    assert RejectReason.RANDK_SUPPORT_MISMATCH in ATTRIBUTABLE


def test_the_header_names_the_codec_that_encoded_the_body() -> None:
    prepared = UpdatePipeline("top-k-q8", sparsity=0.01).prepare(
        delta(), context(1), key=KEY, fleet=FLEET, base_version=1, counter=1
    )

    assert open_envelope(prepared.wire_bytes, 1 << 20).header.codec == "top-k-q8"
    assert "top-k-q8" in CODECS
