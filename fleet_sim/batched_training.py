"""Local training of many simulated devices at once, equal to per-device ``train_local``.

:func:`byzedge.edge_agent.training.train_local` runs one small SGD loop per device; with tens of
devices of a few dozen samples each, the simulator spends its time in Python and autograd
overhead rather than arithmetic. :func:`train_many` runs the same loops for ``K`` devices
in lockstep with :mod:`torch.func` (``vmap`` of ``grad`` of a ``functional_call``) over
stacked parameters:

* each device's rows and mini-batches are exactly those ``train_local`` uses: the same
  :func:`~byzedge.edge_agent.training.usable_rows` and
  :func:`~byzedge.edge_agent.training.shuffled_batches` (a ``torch.Generator`` seeded with the
  device's seed, one ``randperm`` per epoch, batches cut in order, the last one smaller);
* the batches are padded to ``batch_size`` with a mask, and the loss of a device is the
  masked sum of per-sample losses (``config.loss``: cross-entropy or mse) divided by its
  real batch size, i.e. the same mean ``train_local`` uses;
* devices with fewer steps than the longest get all-masked steps, whose gradient is zero,
  so plain SGD leaves them unchanged (hence local momentum must be 0: a heavy-ball buffer
  would keep moving them).

``tests/sim/test_batched_training.py`` checks the deltas against ``train_local`` within
1e-5 for the same data and seeds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import NDArray
from torch.func import functional_call, grad, vmap

from byzedge.edge_agent.losses import per_sample_loss
from byzedge.edge_agent.seams import LocalData
from byzedge.edge_agent.training import TrainingConfig, shuffled_batches, usable_rows
from byzedge.models.spec import ModelSpec
from byzedge.models.torch_modules import build_module

__all__ = ["train_many"]


def train_many(
    spec: ModelSpec,
    global_params: NDArray[np.float32],
    datasets: Sequence[LocalData],
    config: TrainingConfig,
    seeds: Sequence[int],
) -> NDArray[np.float32]:
    """Train ``len(datasets)`` devices from ``global_params``; return their deltas.

    Parameters
    ----------
    spec, global_params, config:
        As for :func:`byzedge.edge_agent.training.train_local`; ``config.momentum`` must be 0.
    datasets:
        Each device's local data (unusable rows are dropped, as ``train_local`` does).
    seeds:
        Each device's shuffling seed.

    Returns
    -------
    NDArray[np.float32]
        ``(K, spec.dim)``: row ``k`` equals ``train_local(spec, global_params,
        datasets[k], config, seeds[k])`` up to float rounding.

    Raises
    ------
    ValueError
        On mismatched lengths, bad shapes, or local momentum.
    """
    if len(datasets) != len(seeds):
        raise ValueError(f"{len(datasets)} datasets for {len(seeds)} seeds")
    if config.momentum != 0.0:
        raise ValueError("train_many needs plain local SGD (momentum 0)")
    spec.split(global_params)
    # As train_local does: one intra-op thread. The steps are tiny; more threads only fight
    # over the cores (and with the other matrix worker), which slows them many times over.
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    count = len(datasets)
    if count == 0:
        return np.zeros((0, spec.dim), dtype=np.float32)
    usable = [usable_rows(spec, data, config.loss) for data in datasets]
    plans = [
        shuffled_batches(len(labels), config, int(seed))
        for (_, labels), seed in zip(usable, seeds, strict=True)
    ]
    steps = max((len(plan) for plan in plans), default=0)
    width = config.batch_size
    rows = max(1, *(len(labels) for _, labels in usable))
    features = torch.zeros((count, rows, spec.input_dim), dtype=torch.float32)
    # Class indices (count, rows), or real targets (count, rows, outputs) for mse.
    target_dtype = torch.int64 if usable[0][1].dtype == np.int64 else torch.float32
    labels_t = torch.zeros((count, rows, *usable[0][1].shape[1:]), dtype=target_dtype)
    index = torch.zeros((count, max(steps, 1), width), dtype=torch.int64)
    mask = torch.zeros((count, max(steps, 1), width), dtype=torch.float32)
    for k, ((x, y), plan) in enumerate(zip(usable, plans, strict=True)):
        features[k, : len(y)] = torch.from_numpy(np.ascontiguousarray(x))
        labels_t[k, : len(y)] = torch.from_numpy(np.ascontiguousarray(y))
        for s, batch in enumerate(plan):
            index[k, s, : len(batch)] = batch
            mask[k, s, : len(batch)] = 1.0

    module = build_module(spec)
    names = [p.name for p in spec.params]
    start = {
        name: torch.from_numpy(np.array(piece, dtype=np.float32, copy=True))
        for name, piece in zip(names, spec.split(global_params).values(), strict=True)
    }
    params = {
        name: value.unsqueeze(0).repeat(count, *([1] * value.dim()))
        for name, value in start.items()
    }

    def loss(
        p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, w: torch.Tensor
    ) -> torch.Tensor:
        logits = functional_call(module, p, (x,))
        per_sample = per_sample_loss(config.loss, logits, y)
        return (per_sample * w).sum() / w.sum().clamp(min=1.0)

    step_grad = vmap(grad(loss))
    device_index = torch.arange(count)[:, None]
    lr = config.learning_rate
    with torch.no_grad():
        for s in range(steps):
            batch = index[:, s]  # (K, width)
            inputs = features[device_index, batch]  # (K, width, input_dim)
            targets = labels_t[device_index, batch]  # (K, width) or (K, width, outputs)
            grads = step_grad(params, inputs, targets, mask[:, s])
            params = {name: params[name] - lr * grads[name] for name in names}
    flat = torch.cat([params[name].reshape(count, -1) for name in names], dim=1)
    return (flat.numpy() - global_params[None, :]).astype(np.float32)
