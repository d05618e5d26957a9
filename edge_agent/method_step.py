"""A training method's device half inside the agent: what to send, and the state it keeps.

:func:`propose` is the torch part (the gradients), run in the training worker like local
training (:mod:`byzedge.edge_agent.worker`) or in-process; :class:`MethodDevice` is the rest,
in the agent's own process: the method's device state and the previous model, persisted with
the agent's state file, and one update pipeline per compression the coordinator's plans ask
for.

Order in a round (:meth:`byzedge.edge_agent.service.Agent._train_and_publish`)::

    plan = RoundPlan.from_meta(model.plan)            signed by the coordinator
    proposal = propose(..., previous_for(plan), ...)   None: wait for a resync point
    prepared = pipeline(plan).prepare(proposal...)     attack stages, codec, signature
    method.commit(plan, proposal, prepared.sent)       device state
    save the agent state, then publish                 a crash after the save re-sends the
                                                       same bytes (SentUpdate), never a
                                                       message the state does not know
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from byzedge.edge_agent.pipeline import UpdatePipeline
from byzedge.edge_agent.seams import LocalData, UpdateStage, WireStage
from byzedge.methods import build_method
from byzedge.methods.base import (
    DeviceState,
    Proposal,
    RoundPlan,
    model_digest,
    vector_from_plain,
    vector_to_plain,
)

__all__ = ["DeviceStepJob", "MethodDevice", "propose"]


@dataclass(frozen=True, slots=True)
class DeviceStepJob:
    """Everything a method's device step reads (it travels to the training worker).

    Attributes
    ----------
    model_name:
        Registry name of the model (its loss is the oracle's).
    plan:
        The round's signed plan.
    params, previous:
        ``x_r`` and, when the device holds the model the plan names, ``x_{r-1}``.
    data:
        The round's local samples.
    state:
        The method's device state as committed so far (the step does not change it).
    device_id, seed:
        Who steps, and the seed of its minibatches and noise this round.
    loss:
        The ``[training]`` loss (``cross-entropy`` or ``mse``).
    """

    model_name: str
    plan: RoundPlan
    params: NDArray[np.float32]
    previous: NDArray[np.float32] | None
    data: LocalData
    state: DeviceState
    device_id: str
    seed: int
    loss: str = "cross-entropy"


def propose(job: DeviceStepJob) -> Proposal | None:
    """Run the method's device step on the local data (``None``: wait for a resync point).

    A module-level function so the training worker can run it; torch is imported here, in
    whichever process runs it.

    Raises
    ------
    ValueError
        When no local row is usable (the message says why): the agent reports the round
        as skipped instead of sending a gradient of nothing.
    """
    from byzedge.edge_agent.gradients import TorchGradientOracle  # noqa: PLC0415 - torch
    from byzedge.edge_agent.training import describe_unusable  # noqa: PLC0415
    from byzedge.models import get_model_spec  # noqa: PLC0415

    spec = get_model_spec(job.model_name)
    oracle = TorchGradientOracle(spec, job.data, job.loss)
    if oracle.samples == 0:
        raise ValueError(describe_unusable(spec, job.data, job.loss))
    method = build_method(job.plan.algorithm)
    return method.propose(
        job.plan,
        job.params,
        job.previous,
        oracle,
        job.state,
        device_id=job.device_id,
        seed=job.seed,
    )


@dataclass(slots=True)
class _PreviousModel:
    sha256: str
    params: NDArray[np.float32]


class MethodDevice:
    """The agent's side of a training method: device state, previous model, pipelines.

    Parameters
    ----------
    dim:
        The model's parameter count (state of another size is dropped on load).
    stages, wire_stages:
        The fault injector's stages, run on method messages as on FedAvg updates.
    """

    def __init__(
        self, dim: int, stages: Sequence[UpdateStage] = (), wire_stages: Sequence[WireStage] = ()
    ) -> None:
        self.dim = dim
        self.state = DeviceState()
        self._previous: _PreviousModel | None = None
        self._stages = list(stages)
        self._wire_stages = list(wire_stages)
        self._pipelines: dict[tuple[str, float, str], UpdatePipeline] = {}

    # -- persistence -----------------------------------------------------------------

    def to_plain(self) -> dict[str, Any]:
        """msgpack-friendly form, kept under ``"method"`` in the agent's state file."""
        previous = self._previous
        return {
            "state": self.state.to_plain(),
            "previous_sha256": previous.sha256 if previous is not None else None,
            "previous_params": vector_to_plain(previous.params) if previous else None,
        }

    def load_plain(self, document: object) -> None:
        """Restore :meth:`to_plain`.

        Anything unusable starts from nothing; the method then resyncs by its own rule.
        """
        if not isinstance(document, Mapping):
            return
        self.state = DeviceState.from_plain(document.get("state"), self.dim)
        sha = document.get("previous_sha256")
        params = vector_from_plain(document.get("previous_params"), self.dim)
        if isinstance(sha, str) and params is not None and model_digest(params) == sha:
            self._previous = _PreviousModel(sha, params)

    # -- models ----------------------------------------------------------------------

    def observe(self, params: NDArray[np.float32], sha256: str) -> None:
        """Remember a verified model as the previous one for the next round's difference.

        Every model the agent verifies counts, sampled or not: MARINA-style methods
        broadcast to everyone so each device can take ``x_r - x_{r-1}`` when next asked.
        """
        self._previous = _PreviousModel(sha256, np.array(params, dtype=np.float32, copy=True))

    def previous_for(self, plan: RoundPlan) -> NDArray[np.float32] | None:
        """``x_{r-1}`` if the stored previous model is the one the plan names, else ``None``."""
        previous = self._previous
        if previous is None or plan.previous_sha256 is None:
            return None
        return previous.params if previous.sha256 == plan.previous_sha256 else None

    def pipeline(self, plan: RoundPlan) -> UpdatePipeline:
        """The pipeline with the codec the plan asks for (``compression``, ``sparsity``).

        The coordinator decides the compression of method messages (and ``rand-k``'s
        support): it must match the method's compressor class, which the coordinator
        checked at config load.
        """
        compression = str(plan.option("compression", "dense"))
        sparsity = plan.number("sparsity", 0.1)
        support = str(plan.option("rand_k_support", "device"))
        key = (compression, sparsity, support)
        if key not in self._pipelines:
            self._pipelines[key] = UpdatePipeline(
                compression,
                sparsity=sparsity,
                support=support,
                error_feedback=False,  # methods carry their own error feedback
                stages=self._stages,
                wire_stages=self._wire_stages,
            )
        return self._pipelines[key]

    def commit(self, plan: RoundPlan, proposal: Proposal, sent: NDArray[np.float32]) -> None:
        """Fold what was sealed into the device state (before it is published)."""
        build_method(plan.algorithm).commit(plan, proposal, sent, self.state)
