"""Training in a worker process gives the in-process delta, and its failures are typed."""

from __future__ import annotations

import numpy as np
import pytest

from byzedge.edge_agent.config import TrainingSettings
from byzedge.edge_agent.seams import LocalData
from byzedge.edge_agent.training import TrainingConfig, train_local
from byzedge.edge_agent.worker import TrainingWorker, train_in_worker
from byzedge.models import get_model_spec, initial_parameters
from byzedge.models.datasets import load_digits_split


def test_the_worker_returns_the_in_process_delta_up_to_float_rounding() -> None:
    spec = get_model_spec("mlp")
    params = initial_parameters(spec, np.random.default_rng(0))
    digits = load_digits_split()
    data = LocalData(digits.train_x[:64], digits.train_y[:64])
    settings = TrainingSettings(epochs=1, batch_size=16)

    in_worker = train_in_worker("mlp", params, data, settings, seed=7)
    in_process = train_local(spec, params, data, TrainingConfig.from_settings(settings), seed=7)

    # The same computation; torch's thread count may differ between the two processes, which
    # reorders float32 sums (differences of ~1e-9 seen).
    np.testing.assert_allclose(in_worker, in_process, rtol=1e-4, atol=1e-7)


def test_bad_data_raises_the_trainers_value_error_in_the_agent() -> None:
    spec = get_model_spec("mlp")
    params = initial_parameters(spec, np.random.default_rng(0))
    wrong_width = LocalData(np.zeros((8, 10), np.float32), np.zeros(8, np.int64))

    with pytest.raises(ValueError, match=r"features must have shape \(m, 64\)"):
        train_in_worker("mlp", params, wrong_width, TrainingSettings(), seed=0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_worker_lingers_for_the_next_round_then_is_released() -> None:
    spec = get_model_spec("mlp")
    params = initial_parameters(spec, np.random.default_rng(0))
    digits = load_digits_split()
    data = LocalData(digits.train_x[:32], digits.train_y[:32])
    clock = Clock()
    worker = TrainingWorker(linger_s=60.0, clock=clock)
    try:
        worker.train("mlp", params, data, TrainingSettings(), seed=1)
        clock.now += 59.0
        kept = worker.release_if_idle()
        worker.train("mlp", params, data, TrainingSettings(), seed=2)  # reuses the process
        clock.now += 60.0
        released = worker.release_if_idle()
    finally:
        worker.close()

    assert not kept
    assert released
    assert not worker.running


def test_without_linger_the_worker_ends_with_the_round() -> None:
    spec = get_model_spec("mlp")
    params = initial_parameters(spec, np.random.default_rng(0))
    data = LocalData(np.zeros((4, 64), np.float32), np.zeros(4, np.int64))
    worker = TrainingWorker(linger_s=0)

    worker.train("mlp", params, data, TrainingSettings(), seed=0)

    assert not worker.running
