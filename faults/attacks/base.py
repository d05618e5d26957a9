"""The two kinds of device-local attack: on the training data, or on the update.

A *data* attack is a :class:`~edge_agent.seams.SensorSource` wrapper (built as
``cls(source, **params)``); an *update* attack is an :class:`~edge_agent.seams.UpdateStage`
(built as ``cls(**params)``). :attr:`acts_on` on each class says which.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Literal

import numpy as np
from numpy.typing import NDArray

from edge_agent.seams import LocalData, RoundContext, SensorSource
from faults._validate import check_non_negative_int

__all__ = ["AttackTarget", "DataAttack", "UpdateAttack"]

AttackTarget = Literal["data", "update"]


class DataAttack(ABC):
    """An attack that poisons the training data by wrapping the sensor source.

    Parameters
    ----------
    source:
        The sensor source being wrapped.
    start_round:
        First round (``>= 0``) in which the attack acts; earlier rounds read honestly.
    """

    name: ClassVar[str]
    acts_on: ClassVar[AttackTarget] = "data"

    def __init__(self, source: SensorSource, *, start_round: int = 0) -> None:
        self.source = source
        self.start_round = check_non_negative_int("start_round", start_round)

    @abstractmethod
    def _poison(self, data: LocalData, round_number: int) -> LocalData:
        """Return the poisoned version of ``data``."""

    def read(self, round_number: int) -> LocalData:
        """Read the wrapped source, poisoned from ``start_round`` on.

        Parameters
        ----------
        round_number:
            The round whose data is read.

        Returns
        -------
        LocalData
            The wrapped source's data, poisoned when ``round_number >= start_round``.
        """
        data = self.source.read(round_number)
        if round_number < self.start_round:
            return data
        return self._poison(data, round_number)


class UpdateAttack(ABC):
    """An attack that rewrites the update vector in the agent's update pipeline.

    Parameters
    ----------
    start_round:
        First round (``>= 0``) in which the attack acts; earlier updates pass unchanged.
    """

    name: ClassVar[str]
    acts_on: ClassVar[AttackTarget] = "update"

    def __init__(self, *, start_round: int = 0) -> None:
        self.start_round = check_non_negative_int("start_round", start_round)

    @abstractmethod
    def _forge(self, update: NDArray[np.float32], context: RoundContext) -> NDArray[np.float32]:
        """Return the malicious update."""

    def __call__(self, update: NDArray[np.float32], context: RoundContext) -> NDArray[np.float32]:
        """Return the malicious float32 update (the input itself before ``start_round``).

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
        if context.round < self.start_round:
            return update
        return self._forge(update, context).astype(np.float32, copy=False)
