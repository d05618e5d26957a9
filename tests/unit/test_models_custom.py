"""Any PyTorch model: a user's module, named by a factory reference, exported once, served.

The model is defined here, as a user defines theirs: a small 1-D convolutional network
over windows of 3 sensor channels x 32 steps.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from byzedge.cli import main
from byzedge.models import (
    OnnxClassifier,
    export_onnx,
    get_model_spec,
    initial_parameters,
    layout_meta,
    layout_mismatch,
)
from byzedge.models.factory import ModelFactoryError
from byzedge.models.params import load_vector_into, module_to_vector
from byzedge.models.torch_export import spec_from_factory, spec_from_module
from byzedge.models.torch_modules import build_module

REPO = Path(__file__).resolve().parents[2]
WINDOW = (3, 32)


class WindowNet(nn.Module):
    """Two 1-D convolutions over time, a mean over time, a linear head of 4 classes."""

    def __init__(self, channels: int = 3, length: int = 32) -> None:
        super().__init__()
        self.input_shape = (channels, length)
        self.conv1 = nn.Conv1d(channels, 8, kernel_size=5, padding=2)
        self.conv2 = nn.Conv1d(8, 8, kernel_size=3, stride=2, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x))
        h = torch.relu(self.conv2(h))
        out: torch.Tensor = self.head(h.mean(dim=2))
        return out


def make_window_net() -> nn.Module:
    return WindowNet()


def make_long_window_net() -> nn.Module:
    return WindowNet(length=64)


def make_six_channel_net() -> nn.Module:
    return WindowNet(channels=6)


def make_nothing() -> object:
    return "not a module"


REFERENCE = f"{__name__}:make_window_net"


def test_a_factory_reference_gives_the_modules_own_layout_and_input_shape() -> None:
    spec = get_model_spec(REFERENCE)

    assert spec.name == REFERENCE
    assert spec.input_shape == WINDOW
    assert spec.num_classes == 4
    assert [(p.name, p.shape) for p in spec.params] == [
        (name, tuple(p.shape)) for name, p in WindowNet().named_parameters()
    ]


def test_onnx_of_substituted_parameters_equals_torch_for_random_inputs() -> None:
    spec = get_model_spec(REFERENCE)
    rng = np.random.default_rng(0)
    vec = (rng.standard_normal(spec.dim) * 0.5).astype(np.float32)
    x = rng.standard_normal((17, *WINDOW)).astype(np.float32)
    module = WindowNet().eval()
    load_vector_into(module, vec)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()

    actual = OnnxClassifier(export_onnx(spec, vec)).logits(x)

    np.testing.assert_allclose(actual, expected, atol=1e-5)


def test_the_classifier_takes_flattened_rows_as_well_as_windows() -> None:
    spec = get_model_spec(REFERENCE)
    clf = OnnxClassifier(export_onnx(spec, initial_parameters(spec, np.random.default_rng(1))))
    x = np.random.default_rng(2).random((5, *WINDOW), dtype=np.float32)

    np.testing.assert_array_equal(clf.logits(x.reshape(5, -1)), clf.logits(x))
    with pytest.raises(ValueError, match=r"\(m, 3, 32\) or \(m, 96\)"):
        clf.logits(np.zeros((5, 95), dtype=np.float32))


def test_the_torch_module_built_for_training_takes_flattened_rows() -> None:
    spec = get_model_spec(REFERENCE)
    module = build_module(spec)
    x = torch.rand(4, *WINDOW)

    with torch.no_grad():
        assert torch.equal(module(x.reshape(4, -1)), module(x))


def test_round_zero_of_a_users_model_is_its_own_initialisation() -> None:
    spec = get_model_spec(REFERENCE)
    torch.manual_seed(0)  # template_from_reference builds the module under seed 0
    own = module_to_vector(make_window_net())

    np.testing.assert_array_equal(initial_parameters(spec, np.random.default_rng(9)), own)


def test_a_module_handed_over_from_python_starts_from_its_current_weights() -> None:
    module = WindowNet()
    spec = spec_from_module(module, name="windows")

    np.testing.assert_array_equal(
        initial_parameters(spec, np.random.default_rng(0)), module_to_vector(module)
    )
    assert build_module(spec) is not module  # devices train copies


def test_a_factory_handed_over_from_python_is_named_by_its_import_path() -> None:
    spec = spec_from_factory(make_window_net)

    assert spec.name == REFERENCE
    assert spec == get_model_spec(REFERENCE)


def test_a_different_input_shape_is_named_with_both_shapes() -> None:
    device = get_model_spec(REFERENCE)
    coordinator = spec_from_factory(make_long_window_net, name=REFERENCE)

    message = layout_mismatch(device, layout_meta(coordinator))

    assert message == ("model layout differs: input shape coordinator (3, 64), device (3, 32)")


def test_a_different_parameter_shape_is_named_with_both_shapes() -> None:
    device = get_model_spec(REFERENCE)
    coordinator = spec_from_factory(make_six_channel_net, name=REFERENCE)

    message = layout_mismatch(device, layout_meta(coordinator))

    assert message is not None
    assert "parameter 0 coordinator conv1.weight (8, 6, 5), device conv1.weight (8, 3, 5)" in (
        message
    )


def test_the_same_layout_is_no_mismatch() -> None:
    spec = get_model_spec(REFERENCE)

    assert layout_mismatch(spec, layout_meta(spec)) is None


def test_a_factory_that_returns_no_module_is_refused_by_name() -> None:
    with pytest.raises(ModelFactoryError, match=r"returned str, not an nn\.Module"):
        get_model_spec(f"{__name__}:make_nothing")


def test_a_missing_factory_is_refused_by_name() -> None:
    with pytest.raises(ModelFactoryError, match="has no attribute 'no_such_factory'"):
        get_model_spec(f"{__name__}:no_such_factory")


def test_exported_template_serves_on_a_machine_without_torch(tmp_path: Path) -> None:
    template = tmp_path / "window.onnx"
    assert main(["model", "export", REFERENCE, "--out", str(template)]) == 0
    code = (
        "import sys, numpy as np\n"
        "from byzedge.models import get_model_spec, export_onnx, initial_parameters, "
        "OnnxClassifier\n"
        f"spec = get_model_spec({REFERENCE!r}, template=__import__('pathlib').Path("
        f"{str(template)!r}))\n"
        "vec = initial_parameters(spec, np.random.default_rng(0))\n"
        "out = OnnxClassifier(export_onnx(spec, vec)).logits(np.zeros((2, 3, 32), np.float32))\n"
        "assert out.shape == (2, 4), out.shape\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )

    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


def test_a_process_without_torch_resolves_a_reference_in_a_child(tmp_path: Path) -> None:
    # How an agent learns its model's layout without keeping torch (its idle memory).
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from byzedge.models import get_model_spec, layout_fingerprint\n"
        "spec = get_model_spec('test_models_custom:make_window_net')\n"
        "assert spec.input_shape == (3, 32), spec.input_shape\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "print(layout_fingerprint(spec))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=tmp_path, capture_output=True, text=True
    )

    from byzedge.models import layout_fingerprint  # noqa: PLC0415

    assert done.stdout.strip() == layout_fingerprint(get_model_spec(REFERENCE))


def test_model_show_prints_the_layout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "show", REFERENCE]) == 0

    out = capsys.readouterr().out
    assert f"model {REFERENCE}: input (3, 32), 4 outputs" in out
    assert "conv1.weight" in out
