"""``stuck-at``: channels that stop updating and keep reporting old (or fixed) values."""

from __future__ import annotations

import math
from typing import ClassVar, Unpack

import numpy as np
from numpy.typing import NDArray

from byzedge.edge_agent.seams import LocalData, SensorSource
from byzedge.faults._validate import check_fraction
from byzedge.faults.sensors.base import SensorFault, SensorOptions

__all__ = ["StuckAt"]


class StuckAt(SensorFault, intensity=1.0, check=check_fraction):
    """Freeze a fraction ``intensity`` of the channels at old values or at ``value``.

    Parameters
    ----------
    source:
        The wrapped sensor source.
    intensity:
        Fraction in ``[0, 1]`` of the channels (axis 1 of the features: the columns of
        rows, the axes of a sensor's windows) that are stuck, among ``channels`` when
        given; ``1.0`` (default) freezes every one. Which are stuck is drawn once from
        ``seed`` and kept for life.
    value:
        If given (in ``[0, 1]``), stuck channels read this constant. If ``None``
        (default), they repeat the readings of the first round in which the fault was
        active: row ``i`` of an active round gets row ``i mod m0`` of that round's
        ``m0`` rows.
    start_round, probability, seed:
        See :class:`~faults.sensors.base.SensorFault`.

    Notes
    -----
    The first active round is a function of ``(seed, start_round, probability)`` only,
    so the frozen readings are the same whatever order rounds are read in and after a
    restart, provided the wrapped source returns the same data for a round when re-read
    (the frozen round is re-read from it). Labels are not frozen. If the first active
    round had no rows, nothing is frozen and the data passes through.
    """

    name: ClassVar[str] = "stuck-at"

    def __init__(
        self,
        source: SensorSource,
        *,
        value: float | None = None,
        **options: Unpack[SensorOptions],
    ) -> None:
        self.value = None if value is None else check_fraction("value", value)
        super().__init__(source, **options)
        self._frozen: NDArray[np.float32] | None = None

    def stuck_columns(self, num_columns: int) -> NDArray[np.intp]:
        """Return the sorted indices of the stuck channels among ``num_columns``.

        With ``channels`` given, the fraction ``intensity`` is drawn among those channels
        (``channels=[2]`` and the default intensity: exactly channel 2 is stuck).
        """
        candidates = np.arange(num_columns) if self.channels is None else np.array(self.channels)
        count = math.floor(self.intensity * candidates.shape[0] + 0.5)
        chosen = candidates[self.schedule.fixed_draws().permutation(candidates.shape[0])[:count]]
        return np.sort(chosen)

    def first_active_round(self, up_to: int) -> int | None:
        """Return the first round ``<= up_to`` in which the fault is active, if any."""
        for candidate in range(self.start_round, up_to + 1):
            if self.is_active(candidate):
                return candidate
        return None

    def _frozen_features(self, data: LocalData, round_number: int) -> NDArray[np.float32]:
        if self._frozen is None:
            first = self.first_active_round(round_number)
            source_data = (
                data if first is None or first == round_number else self.source.read(first)
            )
            self._frozen = np.array(source_data.features, dtype=np.float32, copy=True)
        return self._frozen

    def _apply(self, data: LocalData, round_number: int, rng: np.random.Generator) -> LocalData:
        features = np.array(data.features, dtype=np.float32, copy=True)
        columns = self.stuck_columns(features.shape[1])
        if self.value is not None:
            features[:, columns] = np.float32(self.value)
            return LocalData(features=features, labels=data.labels)
        frozen = self._frozen_features(data, round_number)
        if frozen.shape[1:] != features.shape[1:]:
            msg = (
                f"stuck-at: the source changed its sample shape from {frozen.shape[1:]} to "
                f"{features.shape[1:]}"
            )
            raise ValueError(msg)
        if frozen.shape[0] == 0 or features.shape[0] == 0:
            return data
        rows = np.arange(features.shape[0]) % frozen.shape[0]
        features[:, columns] = frozen[np.ix_(rows, columns)]
        return LocalData(features=features, labels=data.labels)
