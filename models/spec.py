"""Model specifications: the names and shapes of a model's parameters, without torch.

A :class:`ModelSpec` is what both sides agree on. The coordinator only ever sees the flat
float32 vector of a model's parameters; the spec says how long that vector is and how it
splits into named tensors (in the order of torch's ``named_parameters``). Specs are not
written by hand: they are read from the model's ONNX template
(:mod:`byzedge.models.template`), which torch exported from the model itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["ModelSpec", "ParamSpec"]


@dataclass(frozen=True, slots=True)
class ParamSpec:
    """One named parameter tensor of a model.

    Attributes
    ----------
    name:
        The parameter's name as torch's ``named_parameters`` reports it (``fc1.weight``).
    shape:
        The tensor's shape; every dimension is positive.
    """

    name: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("ParamSpec name must be non-empty")
        if not self.shape or any(int(s) < 1 for s in self.shape):
            raise ValueError(
                f"ParamSpec {self.name!r} shape must have positive dimensions, got {self.shape}"
            )

    @property
    def size(self) -> int:
        """Number of scalars in the tensor."""
        return math.prod(self.shape)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """The architecture-independent description of a registered model.

    Attributes
    ----------
    name:
        Permanent registry name (``mlp``) or the factory reference a user named
        (``package.module:function``); travels in headers and config.
    input_shape:
        Per-sample input shape the module takes, e.g. ``(64,)`` or ``(3, 32)``. Inputs
        may also come flattened to ``prod(input_shape)`` floats per sample; the ONNX
        classifier and the torch modules reshape them.
    num_classes:
        Number of outputs per sample (logits; 1 for a single regression output).
    params:
        The parameters in flat-vector order (torch's ``named_parameters`` order).
    template:
        The serialised ONNX graph whose initializers named in ``params`` receive each
        round's parameters (:func:`byzedge.models.template.fill_template`); ``None`` for
        a bare layout. Not part of equality: two specs are equal when their layouts are.
    factory:
        Builds the torch module, for a model handed over from Python rather than named by
        a factory reference; ``None`` otherwise. Not part of equality.
    """

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    params: tuple[ParamSpec, ...]
    template: bytes | None = field(default=None, compare=False, repr=False)
    factory: Callable[[], Any] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("ModelSpec name must be non-empty")
        if not self.input_shape or any(int(s) < 1 for s in self.input_shape):
            raise ValueError(f"input_shape must have positive dimensions, got {self.input_shape}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if not self.params:
            raise ValueError("params must list at least one ParamSpec")
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise ValueError(f"params names must be unique, got {names}")

    @property
    def dim(self) -> int:
        """Total number of parameters (length of the flat vector)."""
        return sum(p.size for p in self.params)

    @property
    def input_dim(self) -> int:
        """Length of one flattened input sample."""
        return math.prod(self.input_shape)

    def split(self, vec: NDArray[np.float32]) -> dict[str, NDArray[np.float32]]:
        """Split a flat parameter vector into named, shaped arrays.

        Parameters
        ----------
        vec:
            float32 array of shape ``(dim,)``.

        Returns
        -------
        dict[str, NDArray[np.float32]]
            Parameter name to array of its shape, in ``params`` order. The arrays are views
            of ``vec`` (no copy), so writing to them writes to ``vec``.

        Raises
        ------
        ValueError
            If ``vec`` is not a 1-D float32 array of length ``dim``.
        """
        if not isinstance(vec, np.ndarray) or vec.ndim != 1:
            shape = getattr(vec, "shape", None)
            raise ValueError(f"{self.name}: expected a 1-D parameter vector, got shape {shape}")
        if vec.dtype != np.float32:
            raise ValueError(f"{self.name}: expected a float32 vector, got dtype {vec.dtype}")
        if vec.shape[0] != self.dim:
            raise ValueError(
                f"{self.name}: expected a vector of length {self.dim}, got {vec.shape[0]}"
            )
        out: dict[str, NDArray[np.float32]] = {}
        offset = 0
        for p in self.params:
            out[p.name] = vec[offset : offset + p.size].reshape(p.shape)
            offset += p.size
        return out

    def join(self, arrays: Mapping[str, NDArray[np.floating]]) -> NDArray[np.float32]:
        """Concatenate named arrays into a new flat float32 vector (inverse of :meth:`split`).

        Raises
        ------
        ValueError
            If the names differ from ``params`` or a shape does not match.
        """
        expected = [p.name for p in self.params]
        if sorted(arrays) != sorted(expected):
            raise ValueError(f"{self.name}: expected parameters {expected}, got {list(arrays)}")
        parts = []
        for p in self.params:
            arr = np.asarray(arrays[p.name])
            if arr.shape != p.shape:
                raise ValueError(
                    f"{self.name}: parameter {p.name!r} has shape {arr.shape}, expected {p.shape}"
                )
            parts.append(arr.astype(np.float32, copy=False).reshape(-1))
        return np.concatenate(parts).astype(np.float32, copy=False)
