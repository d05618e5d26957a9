"""A device's local loss for the training methods: gradients of the registered model in torch.

:class:`TorchGradientOracle` is the :class:`~byzedge.methods.base.GradientOracle` of a real
device (and of the simulator): the mean loss (cross-entropy, or mse for regression) of the
registered model over the
device's usable rows (:func:`~byzedge.edge_agent.training.usable_rows`), its gradient over
all of them, and gradients at several models over ONE minibatch (Byz-VR-MARINA's and
PAGE's ``grad f_iJ(x_r) - grad f_iJ(x_{r-1})`` need the same samples at both points).
Like :mod:`byzedge.edge_agent.training`, this is a module the agent imports only when it is
about to compute (torch is imported here).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import NDArray

from byzedge.edge_agent.losses import mean_loss
from byzedge.edge_agent.seams import LocalData
from byzedge.edge_agent.training import _configure_torch_once, usable_rows
from byzedge.models.params import load_vector_into
from byzedge.models.spec import ModelSpec
from byzedge.models.torch_modules import build_module

__all__ = ["TorchGradientOracle"]


class TorchGradientOracle:
    """Gradients of the mean loss of ``spec`` over a device's local data.

    Parameters
    ----------
    spec:
        The registered model.
    data:
        The device's samples; rows with a non-finite feature or a label out of range are
        dropped first, as in local training.
    loss:
        ``cross-entropy`` (default) or ``mse`` (:mod:`byzedge.models.tasks`).

    Notes
    -----
    The model is built once and reloaded with each point's parameters; the gradient's
    flat order is ``named_parameters`` order, the project's one flat layout
    (:mod:`byzedge.models.params`). Minibatches are drawn without replacement by a
    ``torch.Generator`` seeded with the given seed (the global torch seed is never
    touched); a batch larger than the data is the whole data.
    """

    def __init__(self, spec: ModelSpec, data: LocalData, loss: str = "cross-entropy") -> None:
        self._spec = spec
        self._loss = loss
        features, labels = usable_rows(spec, data, loss)
        _configure_torch_once()
        self._x = torch.from_numpy(np.ascontiguousarray(features))
        self._y = torch.from_numpy(np.ascontiguousarray(labels))
        self._module = build_module(spec)
        self._module.train()

    @property
    def dim(self) -> int:
        """Number of parameters ``d``."""
        return self._spec.dim

    @property
    def samples(self) -> int:
        """Number of usable local samples."""
        return int(self._y.shape[0])

    def _gradient(
        self, params: NDArray[np.float32], rows: torch.Tensor | None
    ) -> NDArray[np.float32]:
        load_vector_into(self._module, np.asarray(params, dtype=np.float32))
        self._module.zero_grad(set_to_none=True)
        x = self._x if rows is None else self._x[rows]
        y = self._y if rows is None else self._y[rows]
        loss = mean_loss(self._loss, self._module(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
        parts = [
            torch.zeros_like(p).reshape(-1) if p.grad is None else p.grad.reshape(-1)
            for _, p in self._module.named_parameters()
        ]
        return torch.cat(parts).detach().numpy().astype(np.float32, copy=True)

    def full_gradient(self, params: NDArray[np.float32]) -> NDArray[np.float32]:
        """``grad f_i(params)`` over every usable sample (zeros when there is none)."""
        if self.samples == 0:
            return np.zeros(self.dim, dtype=np.float32)
        return self._gradient(params, None)

    def minibatch_gradients(
        self, points: Sequence[NDArray[np.float32]], batch_size: int, seed: int
    ) -> list[NDArray[np.float32]]:
        """Gradients at each of ``points`` over one minibatch of ``batch_size`` samples."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if self.samples == 0:
            return [np.zeros(self.dim, dtype=np.float32) for _ in points]
        generator = torch.Generator().manual_seed(seed)
        rows = torch.randperm(self.samples, generator=generator)[:batch_size]
        return [self._gradient(point, rows) for point in points]
