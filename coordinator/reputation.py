"""Per-device reputation with exponential decay.

Each device's reputation is an exponential moving average of its round outcomes::

    r <- decay * r + (1 - decay) * (1 if good else 0)

so it stays in ``[0, 1]``, a device flagged ``k`` rounds in a row from ``r`` drops to
``decay**k * r``, and one that behaves again recovers by ``(1 - decay) * (1 - r)`` per
round: slowly, so a device cannot alternate attack and good behaviour to stay trusted.
Reputations become aggregation weights; they are not a defence on their own (a fresh or
patient attacker starts at ``initial``), so a robust rule stays behind them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from numpy.typing import NDArray

__all__ = ["ReputationBook"]


def _unit_interval(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return number


class ReputationBook:
    """Reputations in ``[0, 1]`` of the devices, keyed by device id.

    Parameters
    ----------
    decay:
        In ``(0, 1)``; the weight of the past in each update (``reputation_decay``, 0.95).
    initial:
        In ``[0, 1]``; the reputation of a device with no record yet.

    Raises
    ------
    ValueError
        If ``decay`` or ``initial`` is out of range.
    """

    def __init__(self, decay: float = 0.95, initial: float = 1.0) -> None:
        number = _unit_interval("decay", decay)
        if not 0.0 < number < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay!r}")
        self.decay = number
        self.initial = _unit_interval("initial", initial)
        self._reputations: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._reputations)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._reputations

    def record(self, device_id: str, good: bool) -> float:
        """Record one round's outcome for ``device_id`` and return its new reputation."""
        updated = self.after(device_id, good)
        self._reputations[device_id] = updated
        return updated

    def after(self, device_id: str | None, good: bool) -> float:
        """The reputation :meth:`record` would give ``device_id``, without recording it.

        ``None`` stands for a device without a record. Sharded ingest's leader tells the
        workers, before a round, the weight each device will have once the round records
        it as good (the streaming path's weights).
        """
        current = (
            self.initial if device_id is None else self._reputations.get(device_id, self.initial)
        )
        target = 1.0 if good else 0.0
        return self.decay * current + (1.0 - self.decay) * target

    def record_many(self, outcomes: Mapping[str, bool]) -> None:
        """Record one round's outcome for each device in ``outcomes`` (``id -> good``)."""
        for device_id, good in outcomes.items():
            self.record(device_id, good)

    def weight(self, device_id: str) -> float:
        """Return the reputation of ``device_id`` (``initial`` if it has no record)."""
        return self._reputations.get(device_id, self.initial)

    def weights(self, device_ids: Iterable[str]) -> NDArray[np.float64]:
        """Return the reputations of ``device_ids``, in order, as float64 ``(n,)``."""
        return np.array([self.weight(device_id) for device_id in device_ids], dtype=np.float64)

    def reset(self, device_id: str) -> float:
        """Set the reputation of ``device_id`` back to ``initial`` and return it.

        For an operator who has checked a flagged device (``byzedge coordinator reputation
        reset DEVICE``); the device's record is kept (it stays listed), unlike
        :meth:`forget`. Works for a device with no record too.
        """
        self._reputations[device_id] = self.initial
        return self.initial

    def forget(self, device_id: str) -> None:
        """Drop the record of ``device_id`` (e.g. when it is unenrolled); no-op if absent."""
        self._reputations.pop(device_id, None)

    def snapshot(self) -> dict[str, float]:
        """Return a copy of every recorded reputation (``id -> reputation``)."""
        return dict(self._reputations)

    def state_dict(self) -> dict[str, float]:
        """Return the state as a plain ``id -> reputation`` dict (msgpack/JSON friendly)."""
        return dict(self._reputations)

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        """Replace every reputation with those in ``state``.

        Raises
        ------
        ValueError
            If a key is not a string or a value is not a number in ``[0, 1]``; the current
            state is kept then.
        """
        loaded: dict[str, float] = {}
        for device_id, value in state.items():
            if not isinstance(device_id, str):
                raise ValueError(f"reputation keys must be device id strings, got {device_id!r}")
            loaded[device_id] = _unit_interval(f"reputation of {device_id!r}", value)
        self._reputations = loaded

    def __repr__(self) -> str:
        return (
            f"ReputationBook(decay={self.decay!r}, initial={self.initial!r}, "
            f"devices={len(self._reputations)})"
        )
