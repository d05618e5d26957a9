"""Local training on a device: a few epochs of SGD from the global model, returning the delta.

This is the only agent module that imports torch, and the agent imports it only when it is
about to train (torch costs ~220 MB of RSS; inference runs on onnxruntime alone).
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch.nn import functional

from byzedge.edge_agent.config import TrainingSettings
from byzedge.edge_agent.seams import LocalData
from byzedge.models.params import load_vector_into, module_to_vector
from byzedge.models.spec import ModelSpec
from byzedge.models.torch_modules import build_module

__all__ = ["TrainingConfig", "shuffled_batches", "train_local", "usable_rows"]

_log = logging.getLogger(__name__)

_torch_configured = False
_torch_config_lock = threading.Lock()


def _configure_torch_once() -> None:
    """Limit torch to one intra-op thread, once per process.

    Many agents run as threads of one simulator process on small (2-core) machines; torch's
    default of one thread per core makes them fight over the cores and slows everything.
    """
    global _torch_configured  # noqa: PLW0603  (process-wide torch setting, set once)
    with _torch_config_lock:
        if not _torch_configured:
            torch.set_num_threads(1)
            _torch_configured = True


@dataclass(frozen=True, slots=True)
class TrainingConfig:
    """Hyperparameters of local training.

    Attributes
    ----------
    epochs:
        Passes over the local data per round (>= 1).
    learning_rate:
        SGD step size (finite, > 0).
    batch_size:
        Mini-batch size (>= 1); the last batch of an epoch may be smaller.
    momentum:
        SGD heavy-ball momentum in ``[0, 1)``; reset every round.
    """

    epochs: int = 1
    learning_rate: float = 0.1
    batch_size: int = 16
    momentum: float = 0.0

    @classmethod
    def from_settings(cls, settings: TrainingSettings) -> TrainingConfig:
        """The hyperparameters of an agent's ``[training]`` table."""
        return cls(
            epochs=settings.epochs,
            learning_rate=settings.learning_rate,
            batch_size=settings.batch_size,
            momentum=settings.momentum,
        )

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if not math.isfinite(self.learning_rate) or self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be finite and > 0, got {self.learning_rate}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")


def usable_rows(spec: ModelSpec, data: LocalData) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Return the rows of ``data`` training can use: finite features, labels in range.

    Parameters
    ----------
    spec:
        The model being trained (its input width and number of classes).
    data:
        Local samples, features ``(m, spec.input_dim)`` and labels ``(m,)``.

    Returns
    -------
    tuple
        Features as float32 ``(k, input_dim)`` and labels as int64 ``(k,)``, ``k <= m``:
        the rows whose features are all finite and whose label is in
        ``[0, num_classes)``.

    Raises
    ------
    ValueError
        If the features or labels have the wrong shape.
    """
    features = np.asarray(data.features, dtype=np.float32)
    labels = np.asarray(data.labels)
    if features.ndim != 2 or features.shape[1] != spec.input_dim:
        raise ValueError(f"features must have shape (m, {spec.input_dim}), got {features.shape}")
    if labels.shape != (features.shape[0],):
        raise ValueError(f"labels must have shape ({features.shape[0]},), got {labels.shape}")
    # Faulty sensors send NaN/Inf readings, and a corrupted label cannot be learnt from:
    # such rows are dropped rather than allowed to poison (or crash) the step.
    keep = np.isfinite(features).all(axis=1) & (labels >= 0) & (labels < spec.num_classes)
    return features[keep], labels[keep].astype(np.int64)


def shuffled_batches(m: int, config: TrainingConfig, seed: int) -> list[torch.Tensor]:
    """Return the index batches of ``config.epochs`` shuffled passes over ``m`` rows, in order.

    A ``torch.Generator`` seeded with ``seed`` draws one ``randperm`` per epoch; each
    permutation is cut into ``config.batch_size`` batches in order, the last one smaller.
    The global torch seed is never touched.
    """
    generator = torch.Generator().manual_seed(seed)
    batches: list[torch.Tensor] = []
    for _ in range(config.epochs):
        order = torch.randperm(m, generator=generator)
        batches.extend(order[s : s + config.batch_size] for s in range(0, m, config.batch_size))
    return batches


def train_local(
    spec: ModelSpec,
    global_params: NDArray[np.float32],
    data: LocalData,
    config: TrainingConfig,
    seed: int,
) -> NDArray[np.float32]:
    """Train ``spec`` from ``global_params`` on ``data`` and return the parameter delta.

    Cross-entropy loss, plain mini-batch SGD (with optional momentum), shuffled each epoch
    by a ``torch.Generator`` seeded with ``seed`` (the global torch seed is never touched,
    so concurrent agents in one process do not disturb each other).

    Parameters
    ----------
    spec:
        The registered model being trained.
    global_params:
        The global model's flat float32 parameters, shape ``(spec.dim,)``.
    data:
        Local samples; rows with any non-finite feature, or a label outside
        ``[0, num_classes)``, are dropped first.
    config:
        Training hyperparameters.
    seed:
        Seed of the shuffling; the same inputs and seed give the same delta.

    Returns
    -------
    NDArray[np.float32]
        ``local_params - global_params``, shape ``(spec.dim,)``; all zeros when no row is
        usable.

    Raises
    ------
    ValueError
        If ``global_params`` or ``data`` have the wrong shape or dtype.
    """
    spec.split(global_params)  # validates length and dtype with a clear message
    features, labels = usable_rows(spec, data)
    dropped = data.labels.shape[0] - labels.shape[0]
    if dropped:
        _log.debug("dropped %d unusable rows of %d", dropped, data.labels.shape[0])
    if labels.shape[0] == 0:
        return np.zeros(spec.dim, dtype=np.float32)

    _configure_torch_once()
    module = build_module(spec)
    load_vector_into(module, global_params)
    module.train()
    optimizer = torch.optim.SGD(
        module.parameters(), lr=config.learning_rate, momentum=config.momentum
    )
    x = torch.from_numpy(np.ascontiguousarray(features))
    y = torch.from_numpy(np.ascontiguousarray(labels))
    for batch in shuffled_batches(y.shape[0], config, seed):
        optimizer.zero_grad(set_to_none=True)
        loss = functional.cross_entropy(module(x[batch]), y[batch])
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    local = module_to_vector(module)
    delta: NDArray[np.float32] = (local - global_params).astype(np.float32, copy=False)
    return delta
