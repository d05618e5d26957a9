"""Initial model parameters in numpy, distributed like torch's default initialisation.

torch initialises ``nn.Linear`` and ``nn.Conv2d`` weights with
``kaiming_uniform_(a=sqrt(5))``, i.e. ``U(-b, b)`` with
``b = gain * sqrt(3 / fan_in) = sqrt(2 / (1 + 5)) * sqrt(3 / fan_in) = 1 / sqrt(fan_in)``,
and their biases with ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` where ``fan_in`` is the
weight's. Reproducing it here lets the coordinator create round 0 without importing torch.

A model whose template holds its own values (a user's export, :mod:`byzedge.models.template`)
starts from those instead: its own initialisation, whatever layers it has.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from byzedge.models.spec import ModelSpec, ParamSpec
from byzedge.models.template import template_values

__all__ = ["fan_in_bounds", "initial_parameters"]


def _fan_in(weight: ParamSpec) -> int:
    # torch: fan_in = shape[1] * prod(shape[2:]) (input features, or in_channels * kernel).
    if len(weight.shape) < 2:
        raise ValueError(f"weight {weight.name!r} must be at least 2-D, got {weight.shape}")
    return math.prod(weight.shape[1:])


def fan_in_bounds(spec: ModelSpec) -> dict[str, float]:
    """Return each parameter's init bound ``1 / sqrt(fan_in)``.

    A parameter ``<layer>.bias`` takes its ``fan_in`` from ``<layer>.weight`` (torch's rule).

    Raises
    ------
    ValueError
        If a parameter is neither ``*.weight`` nor ``*.bias``, or a bias has no weight.
    """
    by_name = {p.name: p for p in spec.params}
    bounds: dict[str, float] = {}
    for p in spec.params:
        layer, _, kind = p.name.rpartition(".")
        if kind == "weight":
            weight = p
        elif kind == "bias":
            weight_name = f"{layer}.weight"
            if weight_name not in by_name:
                raise ValueError(f"{spec.name}: bias {p.name!r} has no {weight_name!r}")
            weight = by_name[weight_name]
        else:
            raise ValueError(f"{spec.name}: cannot initialise parameter {p.name!r}")
        bounds[p.name] = 1.0 / math.sqrt(_fan_in(weight))
    return bounds


def initial_parameters(spec: ModelSpec, rng: np.random.Generator) -> NDArray[np.float32]:
    """Draw a fresh flat parameter vector for ``spec``.

    Parameters
    ----------
    spec:
        The model to initialise.
    rng:
        Source of randomness; the same seed gives the same vector.

    Returns
    -------
    NDArray[np.float32]
        Shape ``(spec.dim,)``: the template's own values when it holds them (``rng`` is
        then unused), else each parameter ``~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.
    """
    stored = template_values(spec)
    if stored is not None:
        return stored
    bounds = fan_in_bounds(spec)
    vec = np.empty(spec.dim, dtype=np.float32)
    for name, view in spec.split(vec).items():
        b = bounds[name]
        view[...] = rng.uniform(-b, b, size=view.shape)
    return vec
