"""When a fault acts: onset round and a per-round coin (intermittency), shared by every fault."""

from __future__ import annotations

import zlib
from typing import Final

import numpy as np

from faults._validate import check_fraction, check_non_negative_int

__all__ = ["Schedule"]

_COIN: Final = 0
_DRAW: Final = 1


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
