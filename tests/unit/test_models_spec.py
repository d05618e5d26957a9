from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from byzedge.models import MODELS, ModelSpec, ParamSpec, get_model_spec

DIGITS_MODELS = ("cnn", "mlp", "mlp-wide")


def test_mlp_dim_is_the_sum_of_its_layer_sizes() -> None:
    assert get_model_spec("mlp").dim == 64 * 64 + 64 + 10 * 64 + 10


def test_cnn_dim_is_the_sum_of_its_layer_sizes() -> None:
    assert get_model_spec("cnn").dim == 8 * 9 + 8 + 16 * 8 * 9 + 16 + 10 * 256 + 10


@pytest.mark.parametrize("name", DIGITS_MODELS)
def test_every_digits_model_takes_64_flat_inputs_and_has_10_classes(name: str) -> None:
    spec = MODELS[name]
    assert spec.input_dim == 64
    assert spec.num_classes == 10


def test_unknown_model_name_error_lists_known_names() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'resnet'.*cnn, mlp"):
        get_model_spec("resnet")


def test_split_returns_named_views_of_the_vector() -> None:
    spec = get_model_spec("mlp")
    vec = np.arange(spec.dim, dtype=np.float32)
    parts = spec.split(vec)
    assert list(parts) == [p.name for p in spec.params]
    assert parts["fc1.bias"][0] == 64 * 64
    parts["fc2.bias"][-1] = -1.0
    assert vec[-1] == -1.0


def test_split_rejects_wrong_length_naming_both_lengths() -> None:
    spec = get_model_spec("mlp")
    with pytest.raises(ValueError, match=f"length {spec.dim}, got {spec.dim - 1}"):
        spec.split(np.zeros(spec.dim - 1, dtype=np.float32))


def test_split_rejects_float64_vectors() -> None:
    spec = get_model_spec("cnn")
    with pytest.raises(ValueError, match="float32"):
        spec.split(np.zeros(spec.dim, dtype=np.float64))


def test_split_rejects_two_dimensional_input() -> None:
    spec = get_model_spec("cnn")
    with pytest.raises(ValueError, match="1-D"):
        spec.split(np.zeros((1, spec.dim), dtype=np.float32))


def test_join_rejects_a_missing_parameter() -> None:
    spec = get_model_spec("mlp")
    parts = dict(spec.split(np.zeros(spec.dim, dtype=np.float32)))
    del parts["fc2.bias"]
    with pytest.raises(ValueError, match="expected parameters"):
        spec.join(parts)


@pytest.mark.parametrize("name", sorted(MODELS))
@given(seed=st.integers(0, 2**32 - 1))
def test_join_inverts_split(name: str, seed: int) -> None:
    spec = MODELS[name]
    vec = np.random.default_rng(seed).standard_normal(spec.dim).astype(np.float32)
    np.testing.assert_array_equal(spec.join(spec.split(vec)), vec)


def test_spec_rejects_duplicate_parameter_names() -> None:
    with pytest.raises(ValueError, match="unique"):
        ModelSpec("x", (4,), 2, (ParamSpec("w", (2, 4)), ParamSpec("w", (2,))))


def test_param_spec_rejects_zero_dimension() -> None:
    with pytest.raises(ValueError, match="positive"):
        ParamSpec("w", (0, 4))


def test_importing_models_does_not_import_torch() -> None:
    code = "import sys, models; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
