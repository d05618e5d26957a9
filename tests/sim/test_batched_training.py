"""The batched trainer gives the deltas of per-device ``train_local`` (same data and seeds)."""

from __future__ import annotations

import numpy as np
import pytest

from byzedge.edge_agent.seams import LocalData
from byzedge.edge_agent.training import TrainingConfig, train_local
from byzedge.fleet_sim.batched_training import train_many
from byzedge.models import get_model_spec, initial_parameters, load_digits_split


def _datasets() -> list[LocalData]:
    split = load_digits_split()
    sizes = [57, 14, 3, 30, 9]
    datasets, start = [], 0
    for size in sizes:
        x = split.train_x[start : start + size].copy()
        y = split.train_y[start : start + size].copy()
        start += size
        datasets.append(LocalData(features=x, labels=y))
    faulty = datasets[3].features.copy()
    faulty[[0, 5, 7]] = np.nan  # a dropout sensor fault: these rows are dropped
    datasets[3] = LocalData(features=faulty, labels=datasets[3].labels)
    empty = LocalData(features=np.full((4, 64), np.nan, np.float32), labels=np.zeros(4, np.int64))
    return [*datasets, empty]


@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize(("epochs", "batch_size", "lr"), [(1, 16, 0.1), (2, 8, 0.3)])
def test_batched_deltas_equal_train_local(
    model: str, epochs: int, batch_size: int, lr: float
) -> None:
    spec = get_model_spec(model)
    params = initial_parameters(spec, np.random.default_rng(3))
    config = TrainingConfig(epochs=epochs, learning_rate=lr, batch_size=batch_size)
    datasets = _datasets()
    seeds = [11, 12, 13, 14, 15, 16]
    batched = train_many(spec, params, datasets, config, seeds)
    for k, (data, seed) in enumerate(zip(datasets, seeds, strict=True)):
        expected = train_local(spec, params, data, config, seed)
        np.testing.assert_allclose(batched[k], expected, atol=1e-5, rtol=0)
    assert not batched[-1].any()  # no usable row: a zero delta, as train_local returns


def test_batched_training_refuses_local_momentum() -> None:
    spec = get_model_spec("mlp")
    params = initial_parameters(spec, np.random.default_rng(0))
    with pytest.raises(ValueError, match="momentum"):
        train_many(spec, params, _datasets()[:1], TrainingConfig(momentum=0.9), [0])
