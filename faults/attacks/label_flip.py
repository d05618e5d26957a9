"""``label-flip``: train on mirrored labels, ``y' = C - 1 - y``."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from byzedge.edge_agent.seams import LocalData, SensorSource
from byzedge.faults._validate import check_non_negative_int
from byzedge.faults.attacks.base import DataAttack
from byzedge.faults.errors import FaultConfigError

__all__ = ["LabelFlip"]


class LabelFlip(DataAttack):
    """Label flipping: every label ``y`` becomes ``num_classes - 1 - y``; features untouched.

    Parameters
    ----------
    source:
        The wrapped sensor source.
    num_classes:
        Number of classes ``C >= 2`` (default 10, the digits task: ``y' = 9 - y``).
    start_round, probability, seed:
        See :class:`~faults.attacks.base.DataAttack`.

    Notes
    -----
    The device trains honestly on poisoned labels, so its update is a plausible but
    wrong gradient (epfml, VR_Byzantine and Rammal et al. use ``9 - y`` on 10 classes).

    Raises
    ------
    ValueError
        On read, if a label lies outside ``[0, num_classes)`` (``num_classes`` does not
        match the task).
    """

    name: ClassVar[str] = "label-flip"

    def __init__(
        self,
        source: SensorSource,
        *,
        num_classes: int = 10,
        start_round: int = 0,
        probability: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__(source, start_round=start_round, probability=probability, seed=seed)
        self.num_classes = check_non_negative_int("num_classes", num_classes)
        if self.num_classes < 2:
            msg = f"num_classes must be >= 2, got {num_classes!r}"
            raise FaultConfigError(msg)

    def _poison(self, data: LocalData, round_number: int) -> LocalData:
        labels = data.labels
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            msg = (
                f"label-flip: labels span [{labels.min()}, {labels.max()}], outside "
                f"[0, num_classes={self.num_classes})"
            )
            raise ValueError(msg)
        flipped = (self.num_classes - 1 - labels).astype(np.int64, copy=False)
        return LocalData(features=data.features, labels=flipped)
