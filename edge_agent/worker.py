"""Local training in a worker process that exits after the round.

Why: importing torch costs a Raspberry-Pi-class device about 200 MB of resident memory
that no ``del`` gives back. Trained in the agent's own process, the agent would keep that
for weeks between rounds; trained in a short-lived worker, the agent stays small (the
idle figure in benchmarks/results/agent.md) and the memory is the operating system's
again when the round's training is done. The price is starting the worker and importing
torch once per round (about 1-2 s here), small beside a round's minutes on a real fleet.

The worker is started with ``spawn`` (a fresh interpreter, never a fork of the agent with
its broker connection and threads). It receives the model's registry name, the global
parameters, the round's local data (read by the agent through its possibly fault-wrapped
sensor source), the hyperparameters and the seed, and returns the parameter delta: the
same :func:`edge_agent.training.train_local` as in-process training, so both give the
same delta for the same inputs. Arguments travel over multiprocessing's local pipe between
two processes of the same user; nothing from the network is unpickled.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np
from numpy.typing import NDArray

from edge_agent.config import TrainingSettings
from edge_agent.seams import LocalData

__all__ = ["TrainingWorkerError", "train_in_worker"]


class TrainingWorkerError(RuntimeError):
    """The training worker died (killed for memory, crashed) before returning a delta."""


def train_in_worker(
    model: str,
    global_params: NDArray[np.float32],
    data: LocalData,
    settings: TrainingSettings,
    seed: int,
) -> NDArray[np.float32]:
    """Train ``model`` in a fresh worker process; return the delta (see the module docstring).

    Raises
    ------
    TrainingWorkerError
        If the worker process died.
    ValueError
        As :func:`edge_agent.training.train_local` raises it (bad data, bad config).
    """
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        future = pool.submit(_train, model, global_params, data, settings, seed)
        try:
            return future.result()
        except BrokenProcessPool as exc:
            msg = f"the training worker died before returning ({exc})"
            raise TrainingWorkerError(msg) from exc


def _train(
    model: str,
    global_params: NDArray[np.float32],
    data: LocalData,
    settings: TrainingSettings,
    seed: int,
) -> NDArray[np.float32]:
    """The worker's job: the same training as in-process (imports torch, in the worker)."""
    from edge_agent.training import TrainingConfig, train_local  # noqa: PLC0415 - torch
    from models import get_model_spec  # noqa: PLC0415

    config = TrainingConfig.from_settings(settings)
    return train_local(get_model_spec(model), global_params, data, config, seed=seed)
