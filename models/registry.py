"""The explicit registry of model architectures, keyed by their permanent names.

Names travel in manifests and config; keep them (and each spec's parameter layout) forever.
Add a model by adding a spec here, a builder in :mod:`byzedge.models.torch_modules` and a graph
builder in :mod:`byzedge.models.onnx_export`; the conformance tests then cover it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from byzedge.models.spec import ModelSpec, ParamSpec

__all__ = ["MODELS", "get_model_spec"]

_DIGITS_CLASSES = 10

# 64 -> 64 (ReLU) -> 10, as torch's nn.Linear pair fc1, fc2 lays it out.
_MLP = ModelSpec(
    name="mlp",
    input_shape=(64,),
    num_classes=_DIGITS_CLASSES,
    params=(
        ParamSpec("fc1.weight", (64, 64)),
        ParamSpec("fc1.bias", (64,)),
        ParamSpec("fc2.weight", (_DIGITS_CLASSES, 64)),
        ParamSpec("fc2.bias", (_DIGITS_CLASSES,)),
    ),
)

# (1,8,8) -conv3x3 p1-> (8,8,8) -ReLU-> -conv3x3 s2 p1-> (16,4,4) -ReLU-> flatten 256 -> 10.
_CNN = ModelSpec(
    name="cnn",
    input_shape=(1, 8, 8),
    num_classes=_DIGITS_CLASSES,
    params=(
        ParamSpec("conv1.weight", (8, 1, 3, 3)),
        ParamSpec("conv1.bias", (8,)),
        ParamSpec("conv2.weight", (16, 8, 3, 3)),
        ParamSpec("conv2.bias", (16,)),
        ParamSpec("fc.weight", (_DIGITS_CLASSES, 256)),
        ParamSpec("fc.bias", (_DIGITS_CLASSES,)),
    ),
)

# 64 -> 1536 (ReLU) -> 10: the same graph as ``mlp``, 115,210 parameters, so compression
# is measured where the body, not the envelope, dominates an update (issue 10's 100x uplink).
_MLP_WIDE_HIDDEN = 1536
_MLP_WIDE = ModelSpec(
    name="mlp-wide",
    input_shape=(64,),
    num_classes=_DIGITS_CLASSES,
    params=(
        ParamSpec("fc1.weight", (_MLP_WIDE_HIDDEN, 64)),
        ParamSpec("fc1.bias", (_MLP_WIDE_HIDDEN,)),
        ParamSpec("fc2.weight", (_DIGITS_CLASSES, _MLP_WIDE_HIDDEN)),
        ParamSpec("fc2.bias", (_DIGITS_CLASSES,)),
    ),
)

MODELS: Mapping[str, ModelSpec] = MappingProxyType(
    {"mlp": _MLP, "cnn": _CNN, "mlp-wide": _MLP_WIDE}
)


def get_model_spec(name: str) -> ModelSpec:
    """Return the registered spec called ``name``.

    Raises
    ------
    ValueError
        If no model is registered under ``name``; the message lists the known names.
    """
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise ValueError(f"unknown model {name!r}; known models: {known}") from None
