"""The registered models go through the same template path as any user's model.

Their names and parameter layouts are permanent (saved states, manifests and devices in
the field depend on them): the layouts below are the ones the hand-written specs had.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from byzedge.models import (
    MODELS,
    check_onnx_parity,
    export_onnx,
    initial_parameters,
    layout_fingerprint,
    read_template,
)
from byzedge.models.template import template_values
from byzedge.models.torch_modules import BUILDERS, registered_template

PERMANENT_LAYOUTS = {
    "mlp": [
        ("fc1.weight", (64, 64)),
        ("fc1.bias", (64,)),
        ("fc2.weight", (10, 64)),
        ("fc2.bias", (10,)),
    ],
    "cnn": [
        ("conv1.weight", (8, 1, 3, 3)),
        ("conv1.bias", (8,)),
        ("conv2.weight", (16, 8, 3, 3)),
        ("conv2.bias", (16,)),
        ("fc.weight", (10, 256)),
        ("fc.bias", (10,)),
    ],
    "mlp-wide": [
        ("fc1.weight", (1536, 64)),
        ("fc1.bias", (1536,)),
        ("fc2.weight", (10, 1536)),
        ("fc2.bias", (10,)),
    ],
}


@pytest.mark.parametrize("name", sorted(PERMANENT_LAYOUTS))
def test_registered_digits_models_keep_their_exact_layout(name: str) -> None:
    spec = MODELS[name]

    assert [(p.name, p.shape) for p in spec.params] == PERMANENT_LAYOUTS[name]
    assert (spec.input_dim, spec.num_classes) == (64, 10)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_exporting_a_registered_module_again_gives_the_shipped_template(name: str) -> None:
    fresh = read_template(registered_template(name), name=name)
    shipped = MODELS[name]
    assert shipped.template is not None
    assert fresh.template is not None

    assert fresh == shipped
    assert fresh.input_shape == shipped.input_shape
    assert layout_fingerprint(fresh) == layout_fingerprint(shipped)
    ops = [n.op_type for n in onnx.load_from_string(shipped.template).graph.node]
    assert [n.op_type for n in onnx.load_from_string(fresh.template).graph.node] == ops


def test_every_builder_is_registered_and_every_registered_name_has_a_builder() -> None:
    assert sorted(BUILDERS) == sorted(MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shipped_templates_hold_no_parameter_values(name: str) -> None:
    # Round 0 of a registered model is drawn from the coordinator's seed, as before.
    assert template_values(MODELS[name]) is None


@pytest.mark.parametrize("name", sorted(MODELS))
def test_onnxruntime_gives_torchs_outputs_for_random_inputs(name: str) -> None:
    spec = MODELS[name]
    rng = np.random.default_rng(5)
    vec = initial_parameters(spec, rng)
    x = rng.random((33, *spec.input_shape), dtype=np.float32)

    assert check_onnx_parity(spec, vec, x.reshape(33, -1)) < 1e-5


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_served_model_passes_onnxs_full_checker(name: str) -> None:
    spec = MODELS[name]
    model = export_onnx(spec, np.zeros(spec.dim, dtype=np.float32), check=True)

    assert onnx.load_from_string(model).opset_import[0].version == 17
