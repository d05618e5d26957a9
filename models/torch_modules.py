"""torch implementations of the registered models (imported on devices that train only).

Every module takes a batch of flattened samples, shape ``(batch, spec.input_dim)``, so the
wire format, the trainer and the ONNX graph all see the same ``(batch, 64)`` input; the CNN
reshapes to ``(batch, 1, 8, 8)`` itself. Attribute names fix the ``named_parameters`` order,
which must equal the spec's :class:`~models.spec.ParamSpec` order (checked on build).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

import torch
from torch import nn

from byzedge.models.registry import get_model_spec
from byzedge.models.spec import ModelSpec

__all__ = ["DigitsCNN", "DigitsMLP", "build_module"]


class DigitsMLP(nn.Module):
    """The ``mlp`` model: 64 -> ``hidden`` (ReLU) -> 10 (``mlp-wide``: ``hidden = 1536``)."""

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


_BUILDERS: Mapping[str, Callable[[], nn.Module]] = MappingProxyType(
    {"mlp": DigitsMLP, "cnn": DigitsCNN, "mlp-wide": lambda: DigitsMLP(hidden=1536)}
)


def build_module(spec: ModelSpec) -> nn.Module:
    """Build a freshly initialised torch module for a registered ``spec``.

    Raises
    ------
    ValueError
        If ``spec`` is not the registered spec of its name, or no builder exists for it.
    """
    if get_model_spec(spec.name) != spec:
        raise ValueError(f"spec {spec.name!r} differs from the registered spec of that name")
    builder = _BUILDERS.get(spec.name)
    if builder is None:
        raise ValueError(f"no torch builder for model {spec.name!r}")
    module = builder()
    layout = tuple((name, tuple(p.shape)) for name, p in module.named_parameters())
    expected = tuple((p.name, p.shape) for p in spec.params)
    if layout != expected:
        # A programming error: the module and the permanent spec have drifted apart.
        raise ValueError(f"{spec.name}: module layout {layout} != spec layout {expected}")
    return module
