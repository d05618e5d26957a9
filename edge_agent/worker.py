"""Local training in a worker process that goes away when training stops.

Why: importing torch costs a Raspberry-Pi-class device about 200 MB of resident memory
that no ``del`` gives back. Trained in the agent's own process, the agent would keep that
for weeks between rounds; trained in a worker process, the memory is the operating
system's again once the worker exits, and the agent itself stays small (the idle figures in
benchmarks/results/agent.md).

The worker stays for ``worker_linger_s`` after a round (``[training]`` table), so a fleet
running rounds back to back does not pay a new interpreter and torch import every round;
the agent's main loop calls :meth:`TrainingWorker.release_if_idle` and the worker exits
once no round came for that long (0: after every round).

The worker is started with ``spawn`` (a fresh interpreter, never a fork of the agent with
its broker connection and threads). It receives the model's registry name, the global
parameters, the round's local data (read by the agent through its possibly fault-wrapped
sensor source), the hyperparameters and the seed, and returns the parameter delta: the
same :func:`byzedge.edge_agent.training.train_local` as in-process training, so both give the same
delta for the same inputs (up to float32 rounding where torch's thread counts differ).
Arguments travel over multiprocessing's local pipe between two processes of the same user;
nothing from the network is unpickled.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from byzedge.edge_agent.config import TrainingSettings
from byzedge.edge_agent.seams import LocalData

__all__ = ["TrainingWorker", "TrainingWorkerError", "train_in_worker"]

_T = TypeVar("_T")


class TrainingWorkerError(RuntimeError):
    """The training worker died (killed for memory, crashed) before returning a delta."""


class TrainingWorker:
    """A training process kept between rounds that follow closely, released when idle.

    Parameters
    ----------
    linger_s:
        How long the worker stays after a round; 0 ends it after every round.
    clock:
        Monotonic clock (tests inject one).

    Not thread-safe: the agent's main loop owns it.
    """

    def __init__(self, linger_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.linger_s = linger_s
        self._clock = clock
        self._pool: ProcessPoolExecutor | None = None
        self._last_used = 0.0

    @property
    def running(self) -> bool:
        """Whether a worker process is up."""
        return self._pool is not None

    def train(
        self,
        model: str,
        global_params: NDArray[np.float32],
        data: LocalData,
        settings: TrainingSettings,
        seed: int,
    ) -> NDArray[np.float32]:
        """Train ``model`` in the worker (started if needed); return the delta.

        Raises
        ------
        TrainingWorkerError
            If the worker process died; the next round starts a new one.
        ValueError
            As :func:`byzedge.edge_agent.training.train_local` raises it (bad data, bad config).
        """
        return self.call(_train, model, global_params, data, settings, seed)

    def call(self, job: Callable[..., _T], *args: Any) -> _T:
        """Run ``job(*args)`` in the worker (started if needed) and return its result.

        ``job`` must be a module-level function (it is pickled by name): training, or a
        training method's device step (:func:`byzedge.edge_agent.method_step.propose`).

        Raises
        ------
        TrainingWorkerError
            If the worker process died; the next call starts a new one.
        """
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=context,
                initializer=_exit_with_parent,
                initargs=(os.getpid(),),
            )
        try:
            future = self._pool.submit(job, *args)
            return future.result()
        except BrokenProcessPool as exc:
            self.close()
            msg = f"the training worker died before returning ({exc})"
            raise TrainingWorkerError(msg) from exc
        finally:
            self._last_used = self._clock()
            if self.linger_s <= 0:
                self.close()

    def release_if_idle(self) -> bool:
        """End the worker if no round used it for ``linger_s``; ``True`` if it ended."""
        if self._pool is None or self._clock() - self._last_used < self.linger_s:
            return False
        self.close()
        return True

    def close(self) -> None:
        """End the worker now (it is started again by the next :meth:`train`)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


_PARENT_POLL_S = 1.0


def _exit_with_parent(parent: int) -> None:
    """In the worker: end it as soon as the agent that started it is gone.

    Why: a SIGKILLed (or crashed) agent cannot close its pool, and a worker blocked on
    its task queue never notices, so it would hold its ~250 MB of torch until reboot
    (measured: every SIGKILL of an agent left one behind). A daemon thread watches the
    parent; re-parenting (the agent died) ends the process at once.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-agent", daemon=True).start()


def train_in_worker(
    model: str,
    global_params: NDArray[np.float32],
    data: LocalData,
    settings: TrainingSettings,
    seed: int,
) -> NDArray[np.float32]:
    """Train once in a worker that exits right after (see :class:`TrainingWorker`)."""
    return TrainingWorker(linger_s=0).train(model, global_params, data, settings, seed)


def _train(
    model: str,
    global_params: NDArray[np.float32],
    data: LocalData,
    settings: TrainingSettings,
    seed: int,
) -> NDArray[np.float32]:
    """The worker's job: the same training as in-process (imports torch, in the worker)."""
    from byzedge.edge_agent.training import TrainingConfig, train_local  # noqa: PLC0415 - torch
    from byzedge.models import get_model_spec  # noqa: PLC0415

    config = TrainingConfig.from_settings(settings)
    return train_local(get_model_spec(model), global_params, data, config, seed=seed)
