from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from byzedge.models import MODELS, fan_in_bounds, get_model_spec, initial_parameters
from byzedge.models.torch_modules import build_module


@pytest.mark.parametrize("name", sorted(MODELS))
def test_initial_parameters_are_a_float32_vector_of_dim(name: str) -> None:
    spec = MODELS[name]
    vec = initial_parameters(spec, np.random.default_rng(0))
    assert vec.dtype == np.float32
    assert vec.shape == (spec.dim,)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_initial_parameters_stay_within_each_layers_fan_in_bound(name: str) -> None:
    spec = MODELS[name]
    bounds = fan_in_bounds(spec)
    for pname, arr in spec.split(initial_parameters(spec, np.random.default_rng(1))).items():
        assert np.all(np.abs(arr) <= bounds[pname]), pname


@pytest.mark.parametrize("name", sorted(MODELS))
def test_initial_weights_fill_most_of_their_range(name: str) -> None:
    # Uniform on [-b, b]: the extreme of thousands of draws sits close to b.
    spec = MODELS[name]
    bounds = fan_in_bounds(spec)
    for pname, arr in spec.split(initial_parameters(spec, np.random.default_rng(2))).items():
        if pname.endswith(".weight"):
            assert np.abs(arr).max() > 0.9 * bounds[pname], pname


def test_bias_bound_uses_the_weights_fan_in_like_torch() -> None:
    bounds = fan_in_bounds(get_model_spec("cnn"))
    assert bounds["conv2.bias"] == pytest.approx(1 / math.sqrt(8 * 3 * 3))
    assert bounds["fc.bias"] == pytest.approx(1 / math.sqrt(256))


def test_initial_parameters_match_torch_default_init_bounds() -> None:
    spec = get_model_spec("cnn")
    bounds = fan_in_bounds(spec)
    for pname, p in build_module(spec).named_parameters():
        # torch's own draws fall within our bounds and reach near them.
        biggest = float(torch.max(torch.abs(p)).item())
        assert biggest <= bounds[pname] + 1e-7
        if pname.endswith(".weight"):
            assert biggest > 0.8 * bounds[pname]


def test_same_seed_gives_identical_initial_parameters() -> None:
    spec = get_model_spec("mlp")
    a = initial_parameters(spec, np.random.default_rng(42))
    b = initial_parameters(spec, np.random.default_rng(42))
    np.testing.assert_array_equal(a, b)


def test_different_seeds_give_different_initial_parameters() -> None:
    spec = get_model_spec("mlp")
    a = initial_parameters(spec, np.random.default_rng(1))
    b = initial_parameters(spec, np.random.default_rng(2))
    assert not np.array_equal(a, b)
