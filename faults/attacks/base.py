"""The three kinds of device-local attack: on the training data, the update, or the wire.

A *data* attack is a :class:`~edge_agent.seams.SensorSource` wrapper (built as
``cls(source, **params)``); an *update* attack is an :class:`~edge_agent.seams.UpdateStage`
(built as ``cls(**params)``); a *wire* attack is an :class:`~edge_agent.seams.WireStage`
(built as ``cls(**params)``) that rewrites or adds the signed messages after sealing.
:attr:`acts_on` on each class says which.

Every attack takes ``start_round`` (onset), ``probability`` (intermittency: the chance it
acts in a given round from ``start_round`` on) and ``seed`` (of that per-round coin and of
its own draws, where it has any); see :class:`~faults._schedule.Schedule`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Literal

import numpy as np
from numpy.typing import NDArray

from byzedge.edge_agent.seams import (
    LocalData,
    OutgoingMessage,
    RoundContext,
    SensorSource,
    UpdateStage,
)
from byzedge.faults._schedule import Scheduled

__all__ = ["AttackTarget", "DataAttack", "UpdateAttack", "WireAttack"]

AttackTarget = Literal["data", "update", "wire"]


class DataAttack(Scheduled, ABC):
    """An attack that poisons the training data by wrapping the sensor source.

    Parameters
    ----------
    source:
        The sensor source being wrapped.
    start_round:
        First round (``>= 0``) in which the attack acts; earlier rounds read honestly.
    probability:
        Chance in ``[0, 1]`` that the attack acts in a round from ``start_round`` on.
    seed:
        Non-negative seed of the per-round coin and of the attack's own draws.
    """

    acts_on: ClassVar[AttackTarget] = "data"

    def __init__(
        self,
        source: SensorSource,
        *,
        start_round: int = 0,
        probability: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.source = source
        self._init_schedule(start_round, probability, seed)

    @abstractmethod
    def _poison(self, data: LocalData, round_number: int) -> LocalData:
        """Return the poisoned version of ``data``."""

    def update_stage(self) -> UpdateStage | None:
        """Return an update stage that goes with this data attack (``None`` by default).

        The injector appends it to the update pipeline (a boosted backdoor scales the
        update it trained on poisoned data).
        """
        return None

    def read(self, round_number: int) -> LocalData:
        """Read the wrapped source, poisoned in the rounds the attack is active.

        Parameters
        ----------
        round_number:
            The round whose data is read.

        Returns
        -------
        LocalData
            The wrapped source's data, poisoned when :meth:`is_active`.
        """
        data = self.source.read(round_number)
        if not self.is_active(round_number):
            return data
        return self._poison(data, round_number)


class UpdateAttack(Scheduled, ABC):
    """An attack that rewrites the update vector in the agent's update pipeline.

    Parameters
    ----------
    start_round:
        First round (``>= 0``) in which the attack acts; earlier updates pass unchanged.
    probability:
        Chance in ``[0, 1]`` that the attack acts in a round from ``start_round`` on.
    seed:
        Non-negative seed of the per-round coin. Random draws of the attack itself come
        from ``context.rng``, the generator the agent seeds per device and round.
    """

    acts_on: ClassVar[AttackTarget] = "update"

    def __init__(self, *, start_round: int = 0, probability: float = 1.0, seed: int = 0) -> None:
        self._init_schedule(start_round, probability, seed)

    @abstractmethod
    def _forge(self, update: NDArray[np.float32], context: RoundContext) -> NDArray[np.float32]:
        """Return the malicious update."""

    def __call__(self, update: NDArray[np.float32], context: RoundContext) -> NDArray[np.float32]:
        """Return the malicious float32 update (the input itself when not active).

        Parameters
        ----------
        update:
            The honest float32 update of shape ``(d,)``.
        context:
            The round being shaped.

        Returns
        -------
        numpy.ndarray
            A float32 vector of the same shape.
        """
        if not self.is_active(context.round):
            return update
        return self._forge(update, context).astype(np.float32, copy=False)


class WireAttack(Scheduled, ABC):
    """A protocol-level attack: rewrites or adds signed messages after sealing.

    Parameters
    ----------
    start_round:
        First round (``>= 0``) in which the attack acts; earlier messages pass unchanged.
    probability:
        Chance in ``[0, 1]`` that the attack acts in a round from ``start_round`` on.
    seed:
        Non-negative seed of the per-round coin and of the attack's own draws.
    """

    acts_on: ClassVar[AttackTarget] = "wire"

    def __init__(self, *, start_round: int = 0, probability: float = 1.0, seed: int = 0) -> None:
        self._init_schedule(start_round, probability, seed)

    @abstractmethod
    def _abuse(self, message: OutgoingMessage, context: RoundContext) -> list[OutgoingMessage]:
        """Return the messages sent in place of ``message``."""

    def __call__(self, message: OutgoingMessage, context: RoundContext) -> list[OutgoingMessage]:
        """Return the messages to publish instead of ``message`` (``[message]`` when idle).

        Parameters
        ----------
        message:
            A message about to be published (the sealed update, or an earlier wire
            stage's output).
        context:
            The round being sent.

        Returns
        -------
        list of OutgoingMessage
            What to publish, in order.
        """
        if not self.is_active(context.round):
            return [message]
        return self._abuse(message, context)
