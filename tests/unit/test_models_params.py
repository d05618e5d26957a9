from __future__ import annotations

import numpy as np
import pytest
import torch

from byzedge.models import MODELS, ModelSpec, ParamSpec, get_model_spec, initial_parameters
from byzedge.models.params import load_vector_into, module_layout, module_to_vector
from byzedge.models.torch_modules import build_module


@pytest.mark.parametrize("name", sorted(MODELS))
def test_module_parameter_order_matches_the_spec(name: str) -> None:
    spec = MODELS[name]
    module = build_module(spec)
    assert [(n, tuple(p.shape)) for n, p in module.named_parameters()] == [
        (p.name, p.shape) for p in spec.params
    ]
    assert module_layout(module) == spec.params


@pytest.mark.parametrize("name", sorted(MODELS))
def test_vector_module_vector_roundtrip_is_exact(name: str) -> None:
    spec = MODELS[name]
    vec = np.random.default_rng(0).standard_normal(spec.dim).astype(np.float32)
    module = build_module(spec)
    load_vector_into(module, vec)
    np.testing.assert_array_equal(module_to_vector(module), vec)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_loaded_tensors_equal_the_specs_split(name: str) -> None:
    spec = MODELS[name]
    vec = initial_parameters(spec, np.random.default_rng(3))
    module = build_module(spec)
    load_vector_into(module, vec)
    parts = spec.split(vec)
    for pname, p in module.named_parameters():
        np.testing.assert_array_equal(p.detach().numpy(), parts[pname])


def test_module_to_vector_does_not_alias_the_module() -> None:
    module = build_module(get_model_spec("mlp"))
    before = [p.detach().clone() for p in module.parameters()]
    vec = module_to_vector(module)
    vec[:] = 0.0
    for old, p in zip(before, module.parameters(), strict=True):
        assert torch.equal(old, p.detach())


def test_load_vector_does_not_alias_the_vector() -> None:
    spec = get_model_spec("mlp")
    vec = np.ones(spec.dim, dtype=np.float32)
    module = build_module(spec)
    load_vector_into(module, vec)
    vec[:] = 5.0
    assert float(module_to_vector(module).max()) == 1.0


def test_load_vector_accepts_read_only_arrays() -> None:
    spec = get_model_spec("mlp")
    vec = np.zeros(spec.dim, dtype=np.float32)
    vec.flags.writeable = False
    module = build_module(spec)
    load_vector_into(module, vec)
    assert float(np.abs(module_to_vector(module)).max()) == 0.0


def test_load_vector_rejects_wrong_length() -> None:
    spec = get_model_spec("cnn")
    with pytest.raises(ValueError, match=f"length {spec.dim}"):
        load_vector_into(build_module(spec), np.zeros(spec.dim + 1, dtype=np.float32))


def test_load_vector_rejects_float64() -> None:
    spec = get_model_spec("cnn")
    with pytest.raises(ValueError, match="float32"):
        load_vector_into(build_module(spec), np.zeros(spec.dim))  # type: ignore[arg-type]


def test_build_module_rejects_a_spec_that_differs_from_the_registry() -> None:
    fake = ModelSpec("mlp", (64,), 10, (ParamSpec("fc1.weight", (10, 64)),))
    with pytest.raises(ValueError, match="differs"):
        build_module(fake)


@pytest.mark.parametrize("name", ["cnn", "mlp", "mlp-wide"])
def test_module_maps_a_flat_batch_to_logits(name: str) -> None:
    module = build_module(MODELS[name])
    assert tuple(module(torch.zeros(5, 64)).shape) == (5, 10)
