"""The single seam between torch parameters and flat float32 numpy vectors.

The flat order is ``module.named_parameters()`` order, which the registered specs record.
Nothing else in the project converts between the two representations.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from byzedge.models.spec import ParamSpec

__all__ = ["load_vector_into", "module_layout", "module_to_vector"]


def module_layout(module: nn.Module) -> tuple[ParamSpec, ...]:
    """Return the names and shapes of ``module``'s parameters in flat-vector order."""
    return tuple(ParamSpec(name, tuple(p.shape)) for name, p in module.named_parameters())


def module_to_vector(module: nn.Module) -> NDArray[np.float32]:
    """Copy ``module``'s parameters into a new flat float32 vector.

    Returns
    -------
    NDArray[np.float32]
        Shape ``(sum of parameter sizes,)``, in ``named_parameters`` order; owns its memory.
    """
    with torch.no_grad():
        flat = [
            p.detach().reshape(-1).to(device="cpu", dtype=torch.float32)
            for _, p in module.named_parameters()
        ]
        if not flat:
            return np.zeros(0, dtype=np.float32)
        return torch.cat(flat).numpy().astype(np.float32, copy=True)


def load_vector_into(module: nn.Module, vec: NDArray[np.float32]) -> None:
    """Overwrite ``module``'s parameters, in place, with the flat vector ``vec``.

    Parameters
    ----------
    module:
        The module whose parameters are replaced.
    vec:
        float32 array of shape ``(sum of parameter sizes,)`` in ``named_parameters`` order.

    Raises
    ------
    ValueError
        If ``vec`` is not a 1-D float32 array of the module's parameter count.
    """
    if not isinstance(vec, np.ndarray) or vec.ndim != 1:
        raise ValueError(
            f"expected a 1-D parameter vector, got shape {getattr(vec, 'shape', None)}"
        )
    if vec.dtype != np.float32:
        raise ValueError(f"expected a float32 vector, got dtype {vec.dtype}")
    params = [p for _, p in module.named_parameters()]
    total = sum(p.numel() for p in params)
    if vec.shape[0] != total:
        raise ValueError(f"expected a vector of length {total}, got {vec.shape[0]}")
    # Copy first: the caller's array may be read-only (torch warns on those) or be changed
    # later, and the module must never alias it.
    source = torch.from_numpy(np.array(vec, dtype=np.float32, copy=True))
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(source[offset : offset + n].reshape(p.shape))
            offset += n
