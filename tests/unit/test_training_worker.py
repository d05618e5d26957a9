"""Training in a worker process gives the in-process delta, and its failures are typed."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.config import TrainingSettings
from edge_agent.seams import LocalData
from edge_agent.training import TrainingConfig, train_local
from edge_agent.worker import train_in_worker
from models import get_model_spec, initial_parameters
from models.datasets import load_digits_split


def test_the_worker_returns_the_in_process_delta() -> None:
    spec = get_model_spec("mlp")
    params = initial_parameters(spec, np.random.default_rng(0))
    digits = load_digits_split()
    data = LocalData(digits.train_x[:64], digits.train_y[:64])
    settings = TrainingSettings(epochs=1, batch_size=16)

    in_worker = train_in_worker("mlp", params, data, settings, seed=7)
    in_process = train_local(spec, params, data, TrainingConfig.from_settings(settings), seed=7)

    np.testing.assert_array_equal(in_worker, in_process)


def test_bad_data_raises_the_trainers_value_error_in_the_agent() -> None:
    spec = get_model_spec("mlp")
    params = initial_parameters(spec, np.random.default_rng(0))
    wrong_width = LocalData(np.zeros((8, 10), np.float32), np.zeros(8, np.int64))

    with pytest.raises(ValueError, match=r"features must have shape \(m, 64\)"):
        train_in_worker("mlp", params, wrong_width, TrainingSettings(), seed=0)
