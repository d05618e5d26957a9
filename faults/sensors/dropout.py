"""``dropout``: readings lost in transit, replaced by NaN or missing altogether."""

from __future__ import annotations

from typing import ClassVar, Literal, Unpack

import numpy as np

from byzedge.edge_agent.seams import LocalData, SensorSource
from byzedge.faults._validate import check_fraction
from byzedge.faults.errors import FaultConfigError
from byzedge.faults.sensors.base import SensorFault, SensorOptions

__all__ = ["Dropout"]

DropoutUnit = Literal["row", "value"]
_UNITS: tuple[DropoutUnit, ...] = ("row", "value")


class Dropout(SensorFault, intensity=0.1, check=check_fraction):
    """Replace a fraction ``intensity`` of the readings by NaN.

    Parameters
    ----------
    source:
        The wrapped sensor source.
    intensity:
        Probability in ``[0, 1]`` that each reading is lost (independently per reading).
    unit:
        What one reading is: ``"row"`` (default) drops whole samples (an 8x8 frame lost
        at once); ``"value"`` drops single channel values.
    missing:
        With ``unit="row"``, remove lost rows (and their labels) instead of filling them
        with NaN: the device simply has fewer samples that round (default ``False``).
    start_round, probability, seed:
        See :class:`~faults.sensors.base.SensorFault`.

    Notes
    -----
    Either way the fraction of NaN values is about ``intensity``. The trainer drops rows
    that contain NaN, so with ``unit="value"`` even a small intensity loses most rows
    (a 64-value row survives with probability ``(1 - intensity)^64``).
    """

    name: ClassVar[str] = "dropout"

    def __init__(
        self,
        source: SensorSource,
        *,
        unit: DropoutUnit = "row",
        missing: bool = False,
        **options: Unpack[SensorOptions],
    ) -> None:
        if unit not in _UNITS:
            msg = f"unit must be one of {', '.join(_UNITS)}, got {unit!r}"
            raise FaultConfigError(msg)
        self.unit: DropoutUnit = unit
        if not isinstance(missing, bool):  # a plan's TOML may hold anything
            msg = f"missing must be true or false, got {missing!r}"  # type: ignore[unreachable]
            raise FaultConfigError(msg)
        if missing and unit != "row":
            msg = f"missing=True needs unit='row', got unit={unit!r}"
            raise FaultConfigError(msg)
        if missing and options.get("channels") is not None:
            msg = "missing=True removes whole rows; it cannot act on single channels"
            raise FaultConfigError(msg)
        self.missing = missing
        super().__init__(source, **options)

    def _apply(self, data: LocalData, round_number: int, rng: np.random.Generator) -> LocalData:
        features = np.array(data.features, dtype=np.float32, copy=True)
        if self.unit == "row":
            lost_rows = rng.random(features.shape[0]) < self.intensity
            if self.missing:
                return LocalData(features=features[~lost_rows], labels=data.labels[~lost_rows])
            features[lost_rows] = np.nan
        else:
            features[rng.random(features.shape) < self.intensity] = np.nan
        return LocalData(features=features, labels=data.labels)
