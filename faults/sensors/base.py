"""What every sensor fault shares: the wrapped source, onset, intermittency and seeding.

A sensor fault is a :class:`~edge_agent.seams.SensorSource` that wraps the agent's real
source. On each :meth:`SensorFault.read` it reads the wrapped source and, if the fault is
active in that round, rewrites the features. The fault is active in round ``k`` when
``k >= start_round`` and a per-round coin with success probability ``probability`` comes
up heads. All randomness of round ``k`` (the coin and the fault's own draws) comes from
generators seeded by ``(seed, fault name, k)``, so re-reading a round returns the same
data, rounds may be read in any order, and a restarted agent sees the same faults.
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from typing import ClassVar, Final, Literal

import numpy as np
from numpy.typing import NDArray

from edge_agent.seams import LocalData, SensorSource
from faults._validate import check_fraction, check_non_negative_int

__all__ = ["SensorFault", "as_features"]

# Purposes of the generators derived from (seed, fault name): each gets its own stream so
# that, e.g., the noise drawn in a round does not depend on `probability`.
_COIN: Final = 0
_DRAW: Final = 1
_STATIC: Final = 2


class SensorFault(ABC):
    """Base class of the sensor-fault wrappers.

    Parameters
    ----------
    source:
        The sensor source being wrapped (the agent's real one, or another fault).
    intensity:
        The fault's strength; its meaning and range are given by each subclass.
    start_round:
        First round in which the fault may be active (``>= 0``); earlier rounds pass the
        wrapped data through unchanged.
    probability:
        Chance in ``[0, 1]`` that the fault is active in a given round at or after
        ``start_round`` (intermittent faults); ``1.0`` means always.
    seed:
        Non-negative integer from which every per-round generator is derived.

    Notes
    -----
    Subclasses set :attr:`name` (the permanent registry name) and implement
    :meth:`_apply`. Features are returned as new float32 arrays; the wrapped source's
    arrays are never modified. Labels pass through untouched.
    """

    name: ClassVar[str]
    acts_on: ClassVar[Literal["data", "update"]] = "data"

    def __init__(
        self,
        source: SensorSource,
        *,
        intensity: float,
        start_round: int = 0,
        probability: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.source = source
        self.intensity = self._check_intensity(intensity)
        self.start_round = check_non_negative_int("start_round", start_round)
        self.probability = check_fraction("probability", probability)
        self.seed = check_non_negative_int("seed", seed)
        self._salt = zlib.crc32(self.name.encode("utf-8"))

    @staticmethod
    @abstractmethod
    def _check_intensity(intensity: object) -> float:
        """Validate ``intensity`` for this fault and return it as a float."""

    @abstractmethod
    def _apply(self, data: LocalData, round_number: int, rng: np.random.Generator) -> LocalData:
        """Return the faulty version of ``data`` for an active round."""

    def _generator(self, purpose: int, round_number: int) -> np.random.Generator:
        sequence = np.random.SeedSequence(
            entropy=self.seed, spawn_key=(self._salt, purpose, round_number)
        )
        return np.random.default_rng(sequence)

    def _static_generator(self) -> np.random.Generator:
        """Return a generator that depends on the seed only (for choices fixed for life)."""
        return self._generator(_STATIC, 0)

    def is_active(self, round_number: int) -> bool:
        """Return whether the fault rewrites the data of ``round_number``.

        Parameters
        ----------
        round_number:
            A round number ``>= 0``.

        Returns
        -------
        bool
            ``round_number >= start_round`` and the round's coin came up heads.
        """
        _check_round(round_number)
        if round_number < self.start_round:
            return False
        if self.probability >= 1.0:
            return True
        return bool(self._generator(_COIN, round_number).random() < self.probability)

    def read(self, round_number: int) -> LocalData:
        """Read the wrapped source and apply the fault if it is active this round.

        Parameters
        ----------
        round_number:
            The round whose data is read (``>= 0``).

        Returns
        -------
        LocalData
            The wrapped source's data, rewritten when the fault is active.
        """
        data = self.source.read(round_number)
        if not self.is_active(round_number):
            return data
        return self._apply(data, round_number, self._generator(_DRAW, round_number))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(intensity={self.intensity!r}, "
            f"start_round={self.start_round!r}, probability={self.probability!r}, "
            f"seed={self.seed!r}, source={self.source!r})"
        )


def _check_round(round_number: int) -> None:
    if round_number < 0:
        msg = f"round_number must be >= 0, got {round_number!r}"
        raise ValueError(msg)


def as_features(values: NDArray[np.floating]) -> NDArray[np.float32]:
    """Clip ``values`` to the sensor range ``[0, 1]`` (NaN stays NaN) as float32."""
    clipped: NDArray[np.float32] = np.clip(values, 0.0, 1.0).astype(np.float32, copy=False)
    return clipped
