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

from byzedge.edge_agent.config import TrainingSettings
from byzedge.edge_agent.losses import mean_loss
from byzedge.edge_agent.seams import LocalData
from byzedge.models.params import load_vector_into, module_to_vector
from byzedge.models.spec import ModelSpec
from byzedge.models.tasks import LossName, get_task
from byzedge.models.torch_modules import build_module

__all__ = [
    "Targets",
    "TrainingConfig",
    "describe_unusable",
    "shuffled_batches",
    "train_local",
    "usable_rows",
]

Targets = NDArray[np.int64] | NDArray[np.float32]
"""Class indices ``(k,)`` (cross-entropy) or real targets ``(k, outputs)`` (mse)."""

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
    loss:
        ``cross-entropy`` (classification) or ``mse`` (regression); see
        :mod:`byzedge.models.tasks`.
    require_rows:
        Raise ``ValueError`` when no row of the round's data is usable (the agent then
        skips the round and says why) instead of returning a zero delta. An agent's
        configuration sets it; the simulator keeps the zero delta.
    """

    epochs: int = 1
    learning_rate: float = 0.1
    batch_size: int = 16
    momentum: float = 0.0
    loss: LossName = "cross-entropy"
    require_rows: bool = False

    @classmethod
    def from_settings(cls, settings: TrainingSettings) -> TrainingConfig:
        """The hyperparameters of an agent's ``[training]`` table."""
        return cls(
            epochs=settings.epochs,
            learning_rate=settings.learning_rate,
            batch_size=settings.batch_size,
            momentum=settings.momentum,
            loss=settings.loss,
            require_rows=True,
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
        get_task(self.loss)  # an unknown loss is refused here, naming the known ones


def usable_rows(
    spec: ModelSpec, data: LocalData, loss: str = "cross-entropy"
) -> tuple[NDArray[np.float32], Targets]:
    """Return the rows of ``data`` training can use, inputs flattened as the models take them.

    Parameters
    ----------
    spec:
        The model being trained (its input shape and number of outputs).
    data:
        Local samples: features ``(m, *spec.input_shape)`` (sensor windows
        ``(m, channels, length)``, images, tabular rows) or the same flattened,
        ``(m, spec.input_dim)``; targets ``(m,)`` class indices for ``cross-entropy``,
        ``(m, spec.num_classes)`` real values for ``mse`` (``(m,)`` for one output).
    loss:
        The task's loss (:mod:`byzedge.models.tasks`).

    Returns
    -------
    tuple
        Features as float32 ``(k, input_dim)`` and targets (int64 ``(k,)`` class indices,
        or float32 ``(k, num_classes)``), ``k <= m``: the rows whose features and target
        are all finite, and whose class index is in ``[0, num_classes)``.

    Raises
    ------
    ValueError
        If the features or targets have the wrong shape, or class labels are not integers.
    """
    task = get_task(loss)
    features = np.asarray(data.features, dtype=np.float32)
    sample = tuple(features.shape[1:])
    if features.ndim < 2 or sample not in (spec.input_shape, (spec.input_dim,)):
        shaped = ", ".join(str(s) for s in spec.input_shape)
        wanted = f"(m, {shaped})" + (
            f" or (m, {spec.input_dim})" if len(spec.input_shape) > 1 else ""
        )
        raise ValueError(f"features must have shape {wanted}, got {features.shape}")
    m = features.shape[0]
    flat = features.reshape(m, spec.input_dim)
    labels = np.asarray(data.labels)
    # Faulty sensors send NaN/Inf readings, and a corrupted label cannot be learnt from:
    # such rows are dropped rather than allowed to poison (or crash) the step.
    finite = np.isfinite(flat).all(axis=1)
    if task.classification:
        if labels.shape != (m,):
            raise ValueError(f"labels must have shape ({m},), got {labels.shape}")
        if labels.dtype.kind not in "iu":
            raise ValueError(f"class labels must be integers, got dtype {labels.dtype}")
        known = finite & (labels >= 0) & (labels < spec.num_classes)
        return flat[known], labels[known].astype(np.int64)
    outputs = spec.num_classes
    if labels.shape == (m,) and outputs == 1:
        labels = labels.reshape(m, 1)
    if labels.shape != (m, outputs):
        raise ValueError(f"mse targets must have shape ({m}, {outputs}), got {labels.shape}")
    if labels.dtype.kind not in "iuf":
        raise ValueError(f"mse targets must be numbers, got dtype {labels.dtype}")
    targets = labels.astype(np.float32)
    real = finite & np.isfinite(targets).all(axis=1)
    return flat[real], targets[real]


def describe_unusable(spec: ModelSpec, data: LocalData, loss: str = "cross-entropy") -> str:
    """Say why no row of ``data`` is usable (the agent's status reason for a skipped round)."""
    features = np.asarray(data.features, dtype=np.float32)
    m = features.shape[0] if features.ndim else 0
    if m == 0:
        return "no local data this round (0 rows)"
    non_finite = int((~np.isfinite(features.reshape(m, -1))).any(axis=1).sum())
    parts = [f"none of {m} rows is usable"]
    if non_finite:
        parts.append(f"{non_finite} with NaN/Inf features")
    labels = np.asarray(data.labels)
    if get_task(loss).classification and labels.shape == (m,):
        out = int(((labels < 0) | (labels >= spec.num_classes)).sum())
        if out:
            parts.append(f"{out} with labels outside [0, {spec.num_classes})")
    elif not get_task(loss).classification:
        bad = int((~np.isfinite(labels.astype(np.float64).reshape(m, -1))).any(axis=1).sum())
        if bad:
            parts.append(f"{bad} with NaN/Inf targets")
    return ": ".join(parts[:1]) + (" (" + ", ".join(parts[1:]) + ")" if len(parts) > 1 else "")


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

    The configured loss (cross-entropy or mse), plain mini-batch SGD (with optional
    momentum), shuffled each epoch by a ``torch.Generator`` seeded with ``seed`` (the global
    torch seed is never touched, so concurrent agents in one process do not disturb each
    other).

    Parameters
    ----------
    spec:
        The registered model being trained.
    global_params:
        The global model's flat float32 parameters, shape ``(spec.dim,)``.
    data:
        Local samples (see :func:`usable_rows` for the shapes); rows with any non-finite
        feature or target, or a label outside ``[0, num_classes)``, are dropped first.
    config:
        Training hyperparameters.
    seed:
        Seed of the shuffling; the same inputs and seed give the same delta.

    Returns
    -------
    NDArray[np.float32]
        ``local_params - global_params``, shape ``(spec.dim,)``; all zeros when no row is
        usable (unless ``config.require_rows``).

    Raises
    ------
    ValueError
        If ``global_params`` or ``data`` have the wrong shape or dtype, or, with
        ``config.require_rows``, when no row is usable (the message says why).
    """
    spec.split(global_params)  # validates length and dtype with a clear message
    features, labels = usable_rows(spec, data, config.loss)
    dropped = np.shape(data.features)[0] - labels.shape[0]
    if dropped:
        _log.debug("dropped %d unusable rows of %d", dropped, np.shape(data.features)[0])
    if labels.shape[0] == 0:
        if config.require_rows:
            raise ValueError(describe_unusable(spec, data, config.loss))
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
        loss = mean_loss(config.loss, module(x[batch]), y[batch])
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    local = module_to_vector(module)
    delta: NDArray[np.float32] = (local - global_params).astype(np.float32, copy=False)
    return delta
