"""``backdoor``: a trigger pattern on part of the local data, relabelled to a target class.

:func:`apply_trigger` is public so that the simulator can stamp the same trigger on the
test set and measure the backdoor's success rate (the share of triggered non-target test
samples classified as ``target_class``).
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import numpy as np
from numpy.typing import NDArray

from byzedge.edge_agent.seams import LocalData, RoundContext, SensorSource, UpdateStage
from byzedge.faults._validate import (
    check_finite,
    check_fraction,
    check_non_negative_int,
    check_positive,
)
from byzedge.faults.attacks.base import DataAttack
from byzedge.faults.errors import FaultConfigError

__all__ = ["Backdoor", "Corner", "apply_trigger"]

Corner = Literal["top-left", "top-right", "bottom-left", "bottom-right"]
_CORNERS: tuple[Corner, ...] = ("top-left", "top-right", "bottom-left", "bottom-right")


def _check_trigger(trigger_size: int, image_side: int, corner: str) -> None:
    if corner not in _CORNERS:
        msg = f"corner must be one of {', '.join(_CORNERS)}, got {corner!r}"
        raise FaultConfigError(msg)
    if image_side < 1:
        msg = f"image_side must be >= 1, got {image_side!r}"
        raise FaultConfigError(msg)
    if not 1 <= trigger_size <= image_side:
        msg = f"trigger_size must be in [1, image_side={image_side}], got {trigger_size!r}"
        raise FaultConfigError(msg)


def apply_trigger(
    features: NDArray[np.floating],
    *,
    trigger_size: int = 2,
    trigger_value: float = 1.0,
    image_side: int = 8,
    corner: Corner = "bottom-right",
) -> NDArray[np.float32]:
    """Stamp the backdoor trigger on every row: a ``trigger_size`` square set to a value.

    Parameters
    ----------
    features:
        Array of shape ``(m, image_side**2)``: flattened row-major square images
        (``(m, 64)`` for the 8x8 digits).
    trigger_size:
        Side of the square patch in pixels (default 2: a 2x2 block).
    trigger_value:
        Value the patch's pixels are set to (default 1.0, the brightest reading).
    image_side:
        Side of the square image (default 8).
    corner:
        Which corner holds the patch (default ``"bottom-right"``).

    Returns
    -------
    numpy.ndarray
        A new float32 array of the same shape; ``features`` is not modified.

    Raises
    ------
    ValueError
        For a bad geometry, or rows that are not ``image_side**2`` long.
    """
    size = check_non_negative_int("trigger_size", trigger_size)
    side = check_non_negative_int("image_side", image_side)
    value = check_finite("trigger_value", trigger_value)
    _check_trigger(size, side, corner)
    stamped = np.array(features, dtype=np.float32, copy=True)
    if stamped.ndim != 2 or stamped.shape[1] != side * side:
        msg = f"features must have shape (m, {side * side}), got {stamped.shape}"
        raise ValueError(msg)
    images = stamped.reshape(-1, side, side)
    rows = slice(0, size) if corner.startswith("top") else slice(side - size, side)
    cols = slice(0, size) if corner.endswith("left") else slice(side - size, side)
    images[:, rows, cols] = np.float32(value)
    return stamped


class _BoostStage:
    """Scales the update in exactly the rounds its backdoor poisoned the data."""

    def __init__(self, attack: Backdoor) -> None:
        self._attack = attack

    def __call__(self, update: NDArray[np.float32], context: RoundContext) -> NDArray[np.float32]:
        if not self._attack.is_active(context.round):
            return update
        return (update * np.float32(self._attack.boost)).astype(np.float32, copy=False)


class Backdoor(DataAttack):
    r"""Backdoor by data poisoning (Bagdasaryan et al., AISTATS 2020; Gu et al., BadNets 2017).

    In an active round a share ``poison_fraction`` of the local samples, drawn at random,
    get the trigger (:func:`apply_trigger`) and the label ``target_class``:

    .. math:: (x_i, y_i) \mapsto (T(x_i), t) \quad \text{for } i \in P_k,\;
              |P_k| = \lfloor \rho m + 1/2 \rfloor

    The device then trains honestly on that data. With ``boost > 1`` its update is also
    scaled, ``u' = boost * u`` (model replacement: ``boost = n / eta`` lets the backdoored
    model survive averaging over ``n`` participants with server learning rate ``eta``).

    Parameters
    ----------
    source:
        The wrapped sensor source.
    target_class:
        The class triggered inputs should be classified as (default 0).
    poison_fraction:
        Share ``rho`` in ``[0, 1]`` of the local samples poisoned per round (default 0.5).
    trigger_size, trigger_value, image_side, corner:
        The trigger; see :func:`apply_trigger`.
    boost:
        Positive factor applied to the update in active rounds (default 1.0: none).
    start_round, probability, seed:
        See :class:`~faults.attacks.base.DataAttack`; the poisoned rows of round ``k``
        are drawn from ``(seed, k)``.

    Notes
    -----
    The clean-task accuracy barely moves, so accuracy alone does not reveal the attack:
    measure the success rate with :func:`apply_trigger` on non-target test samples.
    Robust rules that bound each update's influence (clipping) weaken a boosted backdoor;
    an unboosted one from a small minority is mostly averaged away.
    """

    name: ClassVar[str] = "backdoor"

    def __init__(
        self,
        source: SensorSource,
        *,
        target_class: int = 0,
        poison_fraction: float = 0.5,
        trigger_size: int = 2,
        trigger_value: float = 1.0,
        image_side: int = 8,
        corner: Corner = "bottom-right",
        boost: float = 1.0,
        start_round: int = 0,
        probability: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__(source, start_round=start_round, probability=probability, seed=seed)
        self.target_class = check_non_negative_int("target_class", target_class)
        self.poison_fraction = check_fraction("poison_fraction", poison_fraction)
        self.trigger_size = check_non_negative_int("trigger_size", trigger_size)
        self.trigger_value = check_finite("trigger_value", trigger_value)
        self.image_side = check_non_negative_int("image_side", image_side)
        _check_trigger(self.trigger_size, self.image_side, corner)
        self.corner: Corner = corner
        self.boost = check_positive("boost", boost)

    def trigger(self, features: NDArray[np.floating]) -> NDArray[np.float32]:
        """Stamp this attack's trigger on ``features`` (see :func:`apply_trigger`)."""
        return apply_trigger(
            features,
            trigger_size=self.trigger_size,
            trigger_value=self.trigger_value,
            image_side=self.image_side,
            corner=self.corner,
        )

    def poisoned_rows(self, num_rows: int, round_number: int) -> NDArray[np.intp]:
        """Return the sorted indices of the rows poisoned in an active ``round_number``."""
        count = math.floor(self.poison_fraction * num_rows + 0.5)
        chosen = self.schedule.draws(round_number).permutation(num_rows)[:count]
        return np.sort(chosen)

    def _poison(self, data: LocalData, round_number: int) -> LocalData:
        rows = self.poisoned_rows(data.features.shape[0], round_number)
        features = np.array(data.features, dtype=np.float32, copy=True)
        labels = np.array(data.labels, dtype=np.int64, copy=True)
        if rows.size:
            features[rows] = self.trigger(features[rows])
            labels[rows] = self.target_class
        return LocalData(features=features, labels=labels)

    def update_stage(self) -> UpdateStage | None:
        """Return the boost stage when ``boost != 1`` (active in the same rounds)."""
        if self.boost == 1.0:
            return None
        return _BoostStage(self)
