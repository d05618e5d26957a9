"""When a fault acts: onset round and a per-round coin (intermittency), shared by every fault.

Sensor faults and device-local attacks alike take ``start_round``, ``probability`` and
``seed``; :class:`Scheduled` validates them into one :class:`Schedule`, which also seeds
every generator the fault draws from.
"""

from __future__ import annotations

import zlib
from typing import ClassVar, Final

import numpy as np

from byzedge.faults._validate import check_fraction, check_non_negative_int

__all__ = ["Schedule", "Scheduled"]

# Purposes of the generators derived from (seed, fault name): each gets its own stream so
# that, e.g., the noise drawn in a round does not depend on `probability`.
_COIN: Final = 0
_DRAW: Final = 1
_FIXED: Final = 2


class Schedule:
    """Onset and intermittency of one fault.

    The fault is active in round ``k`` iff ``k >= start_round`` and a coin with success
    probability ``probability`` comes up heads.

    Parameters
    ----------
    name:
        The fault's registry name (salts its generators, so two faults of one device
        flip different coins).
    start_round:
        First round (``>= 0``) in which the fault may act.
    probability:
        Chance in ``[0, 1]`` that the fault acts in a round at or after ``start_round``.
    seed:
        Non-negative seed; the coin of round ``k`` depends on ``(seed, name, k)`` only, so
        a restarted device flips the same coins.
    """

    __slots__ = ("_salt", "probability", "seed", "start_round")

    def __init__(self, name: str, *, start_round: int, probability: float, seed: int) -> None:
        self.start_round = check_non_negative_int("start_round", start_round)
        self.probability = check_fraction("probability", probability)
        self.seed = check_non_negative_int("seed", seed)
        self._salt = zlib.crc32(name.encode("utf-8"))

    def generator(self, purpose: int, round_number: int) -> np.random.Generator:
        """Return the generator of ``(seed, name, purpose, round_number)``."""
        sequence = np.random.SeedSequence(
            entropy=self.seed, spawn_key=(self._salt, purpose, round_number)
        )
        return np.random.default_rng(sequence)

    def draws(self, round_number: int) -> np.random.Generator:
        """Return the generator for the fault's own draws in ``round_number``."""
        return self.generator(_DRAW, round_number)

    def fixed_draws(self) -> np.random.Generator:
        """Return a generator of ``(seed, name)`` only, for choices fixed for life."""
        return self.generator(_FIXED, 0)

    def is_active(self, round_number: int) -> bool:
        """Return whether the fault acts in ``round_number`` (``>= 0``)."""
        if round_number < 0:
            msg = f"round_number must be >= 0, got {round_number!r}"
            raise ValueError(msg)
        if round_number < self.start_round:
            return False
        if self.probability >= 1.0:
            return True
        return bool(self.generator(_COIN, round_number).random() < self.probability)


class Scheduled:
    """Mixin: ``start_round``, ``probability`` and ``seed`` validated into a :class:`Schedule`.

    A subclass sets :attr:`name` (its permanent registry name, which salts the schedule's
    generators) and calls :meth:`_init_schedule` from its constructor.
    """

    name: ClassVar[str]
    schedule: Schedule

    def _init_schedule(self, start_round: int, probability: float, seed: int) -> None:
        self.schedule = Schedule(
            self.name, start_round=start_round, probability=probability, seed=seed
        )

    @property
    def start_round(self) -> int:
        """First round in which the fault may act."""
        return self.schedule.start_round

    @property
    def probability(self) -> float:
        """Chance that the fault acts in a round at or after ``start_round``."""
        return self.schedule.probability

    @property
    def seed(self) -> int:
        """Seed of the per-round coin and draws."""
        return self.schedule.seed

    def is_active(self, round_number: int) -> bool:
        """Return whether the fault acts in ``round_number``.

        Parameters
        ----------
        round_number:
            A round number ``>= 0``.

        Returns
        -------
        bool
            ``round_number >= start_round`` and the round's coin came up heads.
        """
        return self.schedule.is_active(round_number)
