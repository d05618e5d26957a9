"""The agent's update pipeline: stages, compression with error feedback, signature."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from byzedge.edge_agent.pipeline import PreparedUpdate, UpdatePipeline
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


def _sent(prepared: PreparedUpdate) -> np.ndarray:
    return np.frombuffer(open_envelope(prepared.wire_bytes, 1 << 20).body, dtype="<f4")


def _prepare(pipeline: UpdatePipeline, delta: np.ndarray, key: SigningKey, **extra: Any) -> Any:
    return pipeline.prepare(
        delta, _context(), key=key, fleet="f", base_version=0, counter=1, **extra
    )


def test_worker_momentum_sends_the_moving_average_of_the_deltas(key: SigningKey) -> None:
    """momentum1 = b: round 1 sends (1 - b) d1, round 2 sends b m1 + (1 - b) d2."""
    # Prepare
    pipeline = UpdatePipeline("dense", momentum1=0.5)
    first, second = np.full(8, 2.0, np.float32), np.full(8, 4.0, np.float32)
    # Execute
    sent = [_sent(_prepare(pipeline, delta, key)) for delta in (first, second)]
    # Assert
    np.testing.assert_array_equal(sent[0], np.full(8, 1.0))
    np.testing.assert_array_equal(sent[1], np.full(8, 2.5))
    assert pipeline.momentum is not None
    np.testing.assert_array_equal(pipeline.momentum, sent[1])


def test_worker_momentum_is_off_by_default(key: SigningKey) -> None:
    """momentum1 = 0 sends the delta itself and keeps no momentum."""
    pipeline = UpdatePipeline("dense")
    delta = np.arange(8, dtype=np.float32)
    np.testing.assert_array_equal(_sent(_prepare(pipeline, delta, key)), delta)
    assert pipeline.momentum is None


def test_attack_stages_rewrite_the_momentum_not_the_state(key: SigningKey) -> None:
    """Stages run after momentum: they change what is sent, not the device's momentum."""

    def negate(update: np.ndarray, context: RoundContext) -> np.ndarray:
        return -update

    pipeline = UpdatePipeline("dense", momentum1=0.5, stages=[negate])
    sent = _sent(_prepare(pipeline, np.full(8, 2.0, np.float32), key))
    np.testing.assert_array_equal(sent, np.full(8, -1.0))
    assert pipeline.momentum is not None
    np.testing.assert_array_equal(pipeline.momentum, np.full(8, 1.0))


def test_a_vector_with_momentum_applied_is_sent_as_is(key: SigningKey) -> None:
    """momentum_applied: the vector goes out unchanged and the momentum is left alone."""
    pipeline = UpdatePipeline("dense", momentum1=0.5)
    honest = pipeline.momentum_step(np.full(8, 2.0, np.float32))
    sent = _sent(_prepare(pipeline, np.full(8, 7.0, np.float32), key, momentum_applied=True))
    np.testing.assert_array_equal(sent, np.full(8, 7.0))
    assert pipeline.momentum is not None
    np.testing.assert_array_equal(pipeline.momentum, honest)


def test_device_state_round_trips_and_drops_vectors_of_another_size(key: SigningKey) -> None:
    """state_dict holds the residual and the momentum; a new model's size starts afresh."""
    # Prepare
    pipeline = UpdatePipeline("top-k", sparsity=0.25, momentum1=0.9)
    _prepare(pipeline, np.arange(8, dtype=np.float32), key)
    state = pipeline.state_dict()
    restored = UpdatePipeline("top-k", sparsity=0.25, momentum1=0.9)
    other_model = UpdatePipeline("top-k", sparsity=0.25, momentum1=0.9)
    # Execute
    restored.load_state_dict(state, 8)
    other_model.load_state_dict(state, 16)
    # Assert
    assert set(state) == {"residual", "momentum"}
    assert all(isinstance(value, bytes) for value in state.values())
    assert restored.momentum is not None
    assert restored.residual is not None
    assert pipeline.momentum is not None
    assert pipeline.residual is not None
    np.testing.assert_array_equal(restored.momentum, pipeline.momentum)
    np.testing.assert_array_equal(restored.residual, pipeline.residual)
    assert other_model.momentum is None
    assert other_model.residual is None


@pytest.mark.parametrize("beta", [-0.1, 1.0])
def test_momentum_outside_zero_one_is_refused(beta: float) -> None:
    """momentum1 must be in [0, 1)."""
    with pytest.raises(ValueError, match="momentum1"):
        UpdatePipeline("dense", momentum1=beta)
