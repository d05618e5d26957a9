"""The torch gradient oracle of a device (edge_agent.gradients)."""

from __future__ import annotations

import numpy as np
import pytest

from byzedge.edge_agent.gradients import TorchGradientOracle
from byzedge.edge_agent.seams import LocalData
from byzedge.models import get_model_spec, initial_parameters
from byzedge.models.datasets import load_digits_split


@pytest.fixture(scope="module")
def data() -> LocalData:
    split = load_digits_split()
    return LocalData(features=split.train_x[:40].copy(), labels=split.train_y[:40].copy())


def test_the_full_gradient_is_the_mean_cross_entropy_gradient_in_flat_order(
    data: LocalData,
) -> None:
    spec = get_model_spec("mlp")
    oracle = TorchGradientOracle(spec, data)
    params = initial_parameters(spec, np.random.default_rng(0))
    gradient = oracle.full_gradient(params)
    assert gradient.shape == (spec.dim,)
    assert gradient.dtype == np.float32

    import torch  # noqa: PLC0415
    from torch.nn import functional  # noqa: PLC0415

    from byzedge.models.params import load_vector_into  # noqa: PLC0415
    from byzedge.models.torch_modules import build_module  # noqa: PLC0415

    # The same loss in float64, one sample at a time, averaged: an independent computation.
    module = build_module(spec)
    load_vector_into(module, params)
    module.double()
    total = np.zeros(spec.dim)
    for row, label in zip(data.features, data.labels, strict=True):
        module.zero_grad()
        x = torch.from_numpy(row.astype(np.float64)).unsqueeze(0)
        functional.cross_entropy(module(x), torch.tensor([int(label)])).backward()
        total += torch.cat([p.grad.reshape(-1) for _, p in module.named_parameters()]).numpy()
    np.testing.assert_allclose(gradient, total / len(data.labels), atol=1e-6)


def test_minibatch_gradients_use_one_minibatch_at_every_point(data: LocalData) -> None:
    spec = get_model_spec("mlp")
    oracle = TorchGradientOracle(spec, data)
    x0 = initial_parameters(spec, np.random.default_rng(0))
    x1 = initial_parameters(spec, np.random.default_rng(1))
    first = oracle.minibatch_gradients([x0, x1, x0], batch_size=8, seed=5)
    np.testing.assert_array_equal(first[0], first[2])  # same samples at the same point
    again = oracle.minibatch_gradients([x1], batch_size=8, seed=5)
    np.testing.assert_array_equal(again[0], first[1])  # the seed fixes the samples
    other = oracle.minibatch_gradients([x0], batch_size=8, seed=6)
    assert not np.array_equal(other[0], first[0])
    whole = oracle.minibatch_gradients([x0], batch_size=1000, seed=5)
    np.testing.assert_allclose(whole[0], oracle.full_gradient(x0), atol=1e-6)


def test_unusable_rows_are_not_samples() -> None:
    spec = get_model_spec("mlp")
    features = np.zeros((5, 64), np.float32)
    features[1, 3] = np.nan
    labels = np.array([0, 1, 2, 99, 4], dtype=np.int64)
    oracle = TorchGradientOracle(spec, LocalData(features=features, labels=labels))
    assert oracle.samples == 3
    assert oracle.dim == spec.dim
    empty = TorchGradientOracle(spec, LocalData(features[:0], labels[:0]))
    assert empty.samples == 0
    np.testing.assert_array_equal(empty.full_gradient(np.zeros(spec.dim, np.float32)), 0.0)
