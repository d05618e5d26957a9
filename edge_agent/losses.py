"""The torch side of a task's loss (:mod:`byzedge.models.tasks` names them).

Imported only where training happens (torch). Both functions take the model's outputs
``(batch, k)`` and the targets as :func:`~byzedge.edge_agent.training.usable_rows` returns
them: int64 class indices ``(batch,)`` for ``cross-entropy``, float32 ``(batch, k)`` for
``mse``.
"""

from __future__ import annotations

import torch
from torch.nn import functional

from byzedge.models.tasks import get_task

__all__ = ["mean_loss", "per_sample_loss"]


def mean_loss(loss: str, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The batch's mean loss (cross-entropy exactly as ``functional.cross_entropy`` means it).

    For ``mse`` the mean runs over rows and outputs: ``mean((f - y)^2)``.
    """
    if get_task(loss).classification:
        return functional.cross_entropy(outputs, targets)
    return functional.mse_loss(outputs, targets.reshape(outputs.shape))


def per_sample_loss(loss: str, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each row's loss ``(batch,)``, whose mean is :func:`mean_loss` (for masked batches)."""
    if get_task(loss).classification:
        return functional.cross_entropy(outputs, targets, reduction="none")
    squared = (outputs - targets.reshape(outputs.shape)) ** 2
    return squared.mean(dim=1)
