"""Per-device numeric state as rows of two numpy matrices, for fleets of 10^6 devices.

A dict of small dicts and lists per device (the natural layout) costs about a kilobyte
per device in CPython: 1 GB for a million devices, seconds to build at start and to
turn into a document after every round. Here a device is one row of a float64 matrix
and one row of a bool matrix, found through a dict ``id -> row``: about 200 bytes per
device all told, and a round reads and writes its cohort's rows with one fancy index.
Rows freed by :meth:`DeviceTable.drop` are reused, so the matrices do not grow with
churn.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

__all__ = ["DeviceTable"]

_MIN_CAPACITY = 64


class DeviceTable:
    """Rows of ``floats`` float64 and ``flags`` bool values, one per device id.

    Parameters
    ----------
    floats, flags:
        Columns of each matrix.
    """

    def __init__(self, floats: int, flags: int) -> None:
        self._row: dict[str, int] = {}
        self._ids: list[str | None] = []
        self._free: list[int] = []
        self.values: NDArray[np.float64] = np.zeros((0, floats))
        """float64 ``(capacity, floats)``; only the rows of known devices mean anything."""
        self.flags: NDArray[np.bool_] = np.zeros((0, flags), dtype=np.bool_)
        """bool ``(capacity, flags)``, as :attr:`values`."""

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._row

    def row(self, device_id: str) -> int | None:
        """The row of ``device_id``, or ``None`` when it has none."""
        return self._row.get(device_id)

    def rows(self, device_ids: Sequence[str]) -> NDArray[np.int64]:
        """The rows of ``device_ids``, in order; ``-1`` for a device without one."""
        get = self._row.get
        return np.fromiter((get(d, -1) for d in device_ids), dtype=np.int64, count=len(device_ids))

    def ensure(self, device_ids: Sequence[str]) -> NDArray[np.int64]:
        """The rows of ``device_ids``, giving a zeroed row to each device without one.

        The matrices may be reallocated (grown): read :attr:`values` and :attr:`flags`
        after the call, not before.
        """
        rows = self.rows(device_ids)
        missing = np.flatnonzero(rows < 0)
        if missing.size:
            self._reserve(len(self._ids) + missing.size - len(self._free))
            for position in missing.tolist():
                device_id = device_ids[position]
                if device_id in self._row:  # the same new id twice in one call
                    rows[position] = self._row[device_id]
                    continue
                row = self._free.pop() if self._free else len(self._ids)
                if row == len(self._ids):
                    self._ids.append(device_id)
                else:
                    self._ids[row] = device_id
                self._row[device_id] = row
                self.values[row] = 0.0
                self.flags[row] = False
                rows[position] = row
        return rows

    def drop(self, device_id: str) -> None:
        """Forget ``device_id``; its row is reused. No-op when it has none."""
        row = self._row.pop(device_id, None)
        if row is not None:
            self._ids[row] = None
            self._free.append(row)

    def export(self) -> tuple[list[str], NDArray[np.float64], NDArray[np.bool_]]:
        """Every device's id and rows, in row order (copies; for saving)."""
        live = [row for row, device_id in enumerate(self._ids) if device_id is not None]
        ids = [self._ids[row] or "" for row in live]
        index = np.asarray(live, dtype=np.int64)
        return ids, self.values[index], self.flags[index]

    @classmethod
    def from_rows(
        cls, ids: Sequence[str], values: NDArray[np.float64], flags: NDArray[np.bool_]
    ) -> DeviceTable:
        """A table holding ``ids[i]`` in row ``i`` (ids must be distinct)."""
        table = cls(values.shape[1], flags.shape[1])
        table._ids = list(ids)
        table._row = {device_id: row for row, device_id in enumerate(ids)}
        table.values = np.array(values, dtype=np.float64)
        table.flags = np.array(flags, dtype=np.bool_)
        return table

    def _reserve(self, rows: int) -> None:
        capacity = self.values.shape[0]
        if rows <= capacity:
            return
        # Doubling keeps appends amortised O(1) per device.
        grown = max(rows, 2 * capacity, _MIN_CAPACITY)
        values = np.zeros((grown, self.values.shape[1]))
        values[:capacity] = self.values
        flags = np.zeros((grown, self.flags.shape[1]), dtype=np.bool_)
        flags[:capacity] = self.flags
        self.values, self.flags = values, flags
