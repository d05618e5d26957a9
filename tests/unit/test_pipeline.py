"""The agent's update pipeline: stages, compression with error feedback, signature."""

from __future__ import annotations

import numpy as np
import pytest

from byzedge.edge_agent.pipeline import UpdatePipeline
from byzedge.edge_agent.seams import RoundContext
from byzedge.protocol.codecs import TopKCodec
from byzedge.protocol.envelope import open_envelope
from byzedge.protocol.signing import SigningKey


def _context(round_number: int = 1) -> RoundContext:
    return RoundContext(
        device_id="dev-000",
        round=round_number,
        global_params=np.zeros(8, dtype=np.float32),
        rng=np.random.default_rng(0),
    )


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


def test_dense_update_is_signed_and_decodes_to_the_delta(key: SigningKey) -> None:
    delta = np.arange(8, dtype=np.float32)
    prepared = UpdatePipeline("dense").prepare(
        delta, _context(), key=key, fleet="f", base_version=3, counter=9
    )

    envelope = open_envelope(prepared.wire_bytes, 1 << 20)
    envelope.verify(key.verify_key)
    assert envelope.header.base_version == 3
    assert envelope.header.counter == 9
    assert envelope.header.expires_ms > envelope.header.created_ms
    np.testing.assert_array_equal(np.frombuffer(envelope.body, dtype="<f4"), delta)


def test_stages_run_before_compression(key: SigningKey) -> None:
    def negate(update: np.ndarray, context: RoundContext) -> np.ndarray:
        return -update

    pipeline = UpdatePipeline("dense", stages=[negate])
    prepared = pipeline.prepare(
        np.ones(8, dtype=np.float32), _context(), key=key, fleet="f", base_version=0, counter=1
    )

    body = open_envelope(prepared.wire_bytes, 1 << 20).body
    np.testing.assert_array_equal(np.frombuffer(body, dtype="<f4"), -np.ones(8))


def test_error_feedback_sends_what_top_k_dropped_in_the_next_round(key: SigningKey) -> None:
    pipeline = UpdatePipeline("top-k", sparsity=0.25)
    first = np.array([8, 4, 1, 1, 1, 1, 1, 1], dtype=np.float32)
    pipeline.prepare(first, _context(1), key=key, fleet="f", base_version=0, counter=1)
    assert pipeline.residual is not None
    np.testing.assert_allclose(pipeline.residual, [0, 0, 1, 1, 1, 1, 1, 1])

    second = pipeline.prepare(
        np.zeros(8, dtype=np.float32), _context(2), key=key, fleet="f", base_version=1, counter=2
    )

    sent = TopKCodec().decode(open_envelope(second.wire_bytes, 1 << 20).body, 8)
    assert np.count_nonzero(sent) == 2
    assert set(np.flatnonzero(sent)) <= set(range(2, 8))
    np.testing.assert_allclose(sent[sent != 0], 1.0)


def test_without_error_feedback_nothing_is_kept(key: SigningKey) -> None:
    pipeline = UpdatePipeline("top-k", sparsity=0.25, error_feedback=False)
    pipeline.prepare(
        np.arange(8, dtype=np.float32), _context(), key=key, fleet="f", base_version=0, counter=1
    )

    assert pipeline.residual is None


def test_a_nan_update_does_not_poison_the_residual(key: SigningKey) -> None:
    pipeline = UpdatePipeline("float16")
    update = np.full(8, np.nan, dtype=np.float32)
    pipeline.prepare(update, _context(), key=key, fleet="f", base_version=0, counter=1)

    assert pipeline.residual is not None
    assert np.isfinite(pipeline.residual).all()
