"""What a model is trained for: the loss the devices minimise and the metric the fleet reports.

A task is named by its loss, the key users write (``loss = "cross-entropy"`` or
``"mse"`` in an agent's ``[training]`` table, a scenario, the coordinator's config):

* ``cross-entropy``: classification; labels are class indices in ``[0, outputs)``; the
  metric is ``accuracy``, the share of rows whose largest output is the label.
* ``mse``: regression; targets are real numbers, ``(m,)`` for one output or
  ``(m, outputs)``; the metric is ``r2``, the coefficient of determination
  ``1 - sum((y - f)^2) / sum((y - mean(y))^2)`` over all targets: 1 is perfect, 0 is what
  predicting the mean scores, negative is worse. It is reported where accuracy is
  (higher is better for both), under its own name.

numpy only: the coordinator imports this (the torch losses live in
:mod:`byzedge.edge_agent.losses`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import numpy as np
from numpy.typing import NDArray

__all__ = ["LOSSES", "TASKS", "LossName", "Task", "get_task"]

LossName = Literal["cross-entropy", "mse"]
LOSSES: tuple[LossName, ...] = ("cross-entropy", "mse")


def _accuracy(outputs: NDArray[np.float32], targets: NDArray[np.generic]) -> float:
    labels = np.asarray(targets)
    if labels.ndim != 1:
        raise ValueError(f"class labels must be 1-D, got shape {labels.shape}")
    return float(np.mean(np.argmax(outputs, axis=1) == labels))


def _r2(outputs: NDArray[np.float32], targets: NDArray[np.generic]) -> float:
    truth = np.asarray(targets, dtype=np.float64).reshape(outputs.shape[0], -1)
    if truth.shape != outputs.shape:
        raise ValueError(f"targets {truth.shape} do not match outputs {outputs.shape}")
    residual = float(np.sum((truth - outputs) ** 2))
    total = float(np.sum((truth - truth.mean(axis=0)) ** 2))
    # Constant targets: any error is infinitely worse than the mean; none is perfect.
    if total == 0.0:
        return 1.0 if residual == 0.0 else float("-inf")
    return 1.0 - residual / total


@dataclass(frozen=True, slots=True)
class Task:
    """A learning task: its loss name, its metric's name, and the metric.

    Attributes
    ----------
    loss:
        The loss devices minimise (the registry key).
    metric_name:
        What :meth:`metric` computes (``accuracy`` or ``r2``), as reports print it.
    classification:
        Whether targets are class indices (else real-valued).
    """

    loss: LossName
    metric_name: str
    classification: bool
    _metric: Callable[[NDArray[np.float32], NDArray[np.generic]], float]

    def metric(self, outputs: NDArray[np.floating], targets: NDArray[np.generic]) -> float:
        """Score ``outputs`` ``(m, k)`` (logits or predictions) against ``targets``.

        Raises
        ------
        ValueError
            If the shapes disagree or there are no rows.
        """
        out = np.asarray(outputs, dtype=np.float32)
        if out.ndim != 2 or out.shape[0] != np.shape(targets)[0]:
            raise ValueError(f"outputs {out.shape} do not match targets {np.shape(targets)}")
        if out.shape[0] == 0:
            raise ValueError(f"cannot compute {self.metric_name} on an empty set")
        return self._metric(out, targets)


TASKS: Mapping[str, Task] = MappingProxyType(
    {
        "cross-entropy": Task("cross-entropy", "accuracy", True, _accuracy),
        "mse": Task("mse", "r2", False, _r2),
    }
)


def get_task(loss: str) -> Task:
    """Return the task whose loss is called ``loss``.

    Raises
    ------
    ValueError
        For an unknown loss (the message lists the known ones).
    """
    try:
        return TASKS[loss]
    except KeyError:
        raise ValueError(f"unknown loss {loss!r}; known: {', '.join(LOSSES)}") from None
