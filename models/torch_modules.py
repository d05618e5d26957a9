"""torch modules of every model: the registered ones, and any a user names (trainers only).

The registered modules take a batch of flattened samples, shape ``(batch, 64)`` (their
``input_shape`` attribute); the CNN reshapes to ``(batch, 1, 8, 8)`` itself. Attribute
names fix the ``named_parameters`` order, which must equal the spec's
:class:`~models.spec.ParamSpec` order (checked on build). A user's module takes
``(batch, *input_shape)``; :func:`build_module` lets it take flattened rows too, so data
read as ``(m, prod(input_shape))`` rows trains it unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from byzedge.models.factory import is_factory_reference
from byzedge.models.registry import MODELS
from byzedge.models.spec import ModelSpec
from byzedge.models.torch_export import call_factory, export_template, load_factory

__all__ = [
    "BUILDERS",
    "DigitsCNN",
    "DigitsMLP",
    "SensorCNN",
    "build_module",
    "registered_template",
]


class DigitsMLP(nn.Module):
    """The ``mlp`` model: 64 -> ``hidden`` (ReLU) -> 10 (``mlp-wide``: ``hidden = 1536``)."""

    input_shape = (64,)

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(batch, 10)`` for ``x`` of shape ``(batch, 64)``."""
        hidden = torch.relu(self.fc1(x))
        logits: torch.Tensor = self.fc2(hidden)
        return logits


class DigitsCNN(nn.Module):
    """The ``cnn`` model: two 3x3 convolutions (the second with stride 2) and a linear head."""

    input_shape = (64,)

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, kernel_size=3, stride=2, padding=1)
        self.fc = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(batch, 10)`` for ``x`` of shape ``(batch, 64)``."""
        h = x.reshape(-1, 1, 8, 8)
        h = torch.relu(self.conv1(h))
        h = torch.relu(self.conv2(h))
        logits: torch.Tensor = self.fc(torch.flatten(h, start_dim=1))
        return logits


class SensorCNN(nn.Module):
    """The ``sensor-cnn`` model: two strided 1-D convolutions over time, a max, a linear head.

    For windows of a multichannel sensor (BasicMotions: 6 channels x 50 steps); the max over
    time makes the head independent of where in the window a motion happens (a mean
    learnt far slower and less stably: 0.76 vs 1.0 test accuracy after 30 epochs).
    """

    input_shape = (6, 50)

    def __init__(self, channels: int = 6, length: int = 50, classes: int = 4) -> None:
        super().__init__()
        self.channels, self.length = channels, length
        self.conv1 = nn.Conv1d(channels, 16, kernel_size=5, stride=2, padding=2)
        self.conv2 = nn.Conv1d(16, 32, kernel_size=5, stride=2, padding=2)
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``(batch, classes)`` for ``x`` ``(batch, 6, 50)`` (or flat, 300)."""
        h = x.reshape(-1, self.channels, self.length)
        h = torch.relu(self.conv1(h))
        h = torch.relu(self.conv2(h))
        logits: torch.Tensor = self.fc(h.amax(dim=2))
        return logits


BUILDERS: Mapping[str, Callable[[], nn.Module]] = MappingProxyType(
    {
        "mlp": DigitsMLP,
        "cnn": DigitsCNN,
        "mlp-wide": lambda: DigitsMLP(hidden=1536),
        "sensor-cnn": SensorCNN,
    }
)
"""The registered models' factories; their templates (models/templates/) are exported from
these by scripts/generate_model_templates.py."""


def build_module(spec: ModelSpec) -> nn.Module:
    """Build a torch module with the layout of ``spec`` (fresh parameters).

    The module comes from ``spec.factory`` (a model handed over from Python), the
    registered builder of ``spec.name``, or the factory reference ``spec.name``.

    Raises
    ------
    ValueError
        If no builder is known for ``spec``, or the module's layout differs from the spec's
        (the message says ``differs`` and gives both).
    """
    if spec.factory is not None:
        module = call_factory(spec.factory, spec.name)
    elif spec.name in BUILDERS:
        module = BUILDERS[spec.name]()
    elif is_factory_reference(spec.name):
        module = call_factory(load_factory(spec.name), spec.name)
    else:
        known = ", ".join(sorted(MODELS))
        raise ValueError(f"no torch builder for model {spec.name!r}; known models: {known}")
    layout = tuple((name, tuple(p.shape)) for name, p in module.named_parameters())
    expected = tuple((p.name, p.shape) for p in spec.params)
    if layout != expected:
        # The module's code and the layout everyone else agreed on have drifted apart.
        raise ValueError(f"{spec.name}: module layout {layout} differs from {expected}")
    if len(spec.input_shape) > 1:
        module.register_forward_pre_hook(_unflatten_hook(spec.input_shape))
    return module


def _unflatten_hook(
    input_shape: tuple[int, ...],
) -> Callable[[nn.Module, tuple[Any, ...]], tuple[Any, ...] | None]:
    width = math.prod(input_shape)

    def unflatten(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        x = args[0] if args else None
        # Rows of prod(input_shape) floats (how flat data sources deliver them) become
        # samples of input_shape; inputs already shaped pass through untouched.
        if isinstance(x, torch.Tensor) and x.dim() == 2 and x.shape[1] == width:
            return (x.reshape(x.shape[0], *input_shape), *args[1:])
        return None

    return unflatten


def registered_template(name: str) -> bytes:
    """Export the registered model ``name`` to its template (parameters stripped).

    What ``models/templates/<name>.onnx`` holds; scripts/generate_model_templates.py
    writes it, and a test checks that exporting again gives the shipped layout.

    Raises
    ------
    KeyError
        If ``name`` is not registered.
    """
    return export_template(BUILDERS[name](), name=name, keep_values=False)
