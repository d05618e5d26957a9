from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from byzedge.models import (
    MODELS,
    ONNX_OPSET,
    DigitsSplit,
    OnnxClassifier,
    check_onnx_parity,
    export_onnx,
    get_model_spec,
    initial_parameters,
    load_digits_split,
)
from byzedge.models.params import load_vector_into
from byzedge.models.torch_modules import build_module

# The registered models of the digits task (every registered model: test_models_templates.py).
DIGITS_MODELS = sorted(n for n in MODELS if MODELS[n].input_dim == 64)


@pytest.fixture(scope="module")
def digits() -> DigitsSplit:
    return load_digits_split()


@pytest.mark.parametrize("name", DIGITS_MODELS)
def test_onnx_logits_match_torch_on_the_digits_test_set(name: str, digits: DigitsSplit) -> None:
    spec = MODELS[name]
    vec = initial_parameters(spec, np.random.default_rng(0))
    assert check_onnx_parity(spec, vec, digits.test_x) < 1e-5


@pytest.mark.parametrize("name", DIGITS_MODELS)
def test_onnx_parity_holds_for_large_weights(name: str, digits: DigitsSplit) -> None:
    # Trained weights are not small; parity must not rely on init-sized values.
    spec = MODELS[name]
    vec = np.random.default_rng(1).standard_normal(spec.dim).astype(np.float32) * 0.3
    assert check_onnx_parity(spec, vec, digits.test_x[:50]) < 1e-4


@pytest.mark.parametrize("name", DIGITS_MODELS)
def test_onnx_predict_agrees_with_torch_argmax(name: str, digits: DigitsSplit) -> None:
    spec = MODELS[name]
    vec = initial_parameters(spec, np.random.default_rng(2))
    module = build_module(spec)
    load_vector_into(module, vec)
    with torch.no_grad():
        expected = module(torch.from_numpy(digits.test_x.copy())).argmax(dim=1).numpy()
    predicted = OnnxClassifier(export_onnx(spec, vec)).predict(digits.test_x)
    assert predicted.dtype == np.int64
    np.testing.assert_array_equal(predicted, expected)


@pytest.mark.parametrize("name", DIGITS_MODELS)
def test_exported_model_declares_dynamic_batch_and_opset(name: str) -> None:
    spec = MODELS[name]
    model = onnx.load_from_string(export_onnx(spec, np.zeros(spec.dim, dtype=np.float32)))
    assert model.opset_import[0].version == ONNX_OPSET
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert (inp.name, out.name) == ("input", "logits")
    in_dims = inp.type.tensor_type.shape.dim
    out_dims = out.type.tensor_type.shape.dim
    assert in_dims[0].dim_param == "batch"
    assert in_dims[1].dim_value == 64
    assert out_dims[1].dim_value == 10


@pytest.mark.parametrize("batch", [1, 7, 360])
def test_classifier_accepts_any_batch_size(batch: int) -> None:
    spec = get_model_spec("cnn")
    clf = OnnxClassifier(export_onnx(spec, initial_parameters(spec, np.random.default_rng(0))))
    logits = clf.logits(np.zeros((batch, 64), dtype=np.float32))
    assert logits.shape == (batch, 10)
    assert logits.dtype == np.float32


def test_classifier_returns_empty_logits_for_empty_input() -> None:
    spec = get_model_spec("mlp")
    clf = OnnxClassifier(export_onnx(spec, np.zeros(spec.dim, dtype=np.float32)))
    assert clf.logits(np.zeros((0, 64), dtype=np.float32)).shape == (0, 10)


def test_classifier_rejects_wrong_feature_count() -> None:
    spec = get_model_spec("mlp")
    clf = OnnxClassifier(export_onnx(spec, np.zeros(spec.dim, dtype=np.float32)))
    with pytest.raises(ValueError, match=r"\(m, 64\)"):
        clf.logits(np.zeros((3, 63), dtype=np.float32))


def test_accuracy_is_the_fraction_of_correct_predictions() -> None:
    spec = get_model_spec("mlp")
    vec = np.zeros(spec.dim, dtype=np.float32)
    # Bias on class 3 only: every input is classified as 3.
    spec.split(vec)["fc2.bias"][3] = 1.0
    clf = OnnxClassifier(export_onnx(spec, vec))
    x = np.zeros((4, 64), dtype=np.float32)
    assert clf.accuracy(x, np.array([3, 3, 1, 0])) == 0.5


def test_classifier_rejects_garbage_bytes_with_value_error() -> None:
    with pytest.raises(ValueError, match="cannot load ONNX model"):
        OnnxClassifier(b"not an onnx model")


def test_export_rejects_a_vector_of_the_wrong_length() -> None:
    spec = get_model_spec("cnn")
    with pytest.raises(ValueError, match="length"):
        export_onnx(spec, np.zeros(spec.dim - 1, dtype=np.float32))
