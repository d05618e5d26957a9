"""Real sources of a device's local data (the seam the fault injector wraps).

On a device in the field the source is whatever its sensors recorded: an ``.npz`` or CSV
file the device's own pipeline writes, or a user's function that returns the round's
arrays (a live pipeline). In the demo and simulator each agent reads its shard of a
bundled dataset (the digits, or BasicMotions' sensor windows). All return the same
:class:`LocalData`; features may have any per-sample shape (``(m, channels, length)``
windows, images, tabular rows), which training checks against the model's input shape.

Every read failure of a source (a missing or malformed file, a user function that raises
or returns something else) is a ``ValueError`` naming the source, so the agent skips that
round with the reason in its status and keeps serving the next ones.
"""

from __future__ import annotations

import csv
import importlib
import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from byzedge.edge_agent.config import DataConfig
from byzedge.edge_agent.seams import LocalData, SensorSource
from byzedge.models.datasets import load_dataset
from byzedge.models.partition import get_partitioner

__all__ = [
    "CsvSource",
    "DatasetShardSource",
    "DigitsShardSource",
    "FunctionSource",
    "NpzSource",
    "as_local_data",
    "build_source",
]


def as_local_data(
    features: object, labels: object, origin: str, feature_shape: tuple[int, ...] | None = None
) -> LocalData:
    """Check two arrays as one round's data; reshape each row to ``feature_shape`` if given.

    Features become float32; integer labels int64 (class indices), real ones float32
    (regression targets). Only the shapes' agreement is checked here: whether they fit the
    model (and which rows are usable) is training's check.

    Raises
    ------
    ValueError
        Naming ``origin``, when the arrays are not numeric, have no sample axis, or
        disagree in their number of rows.
    """
    try:
        x = np.asarray(features, dtype=np.float32)
        y = np.asarray(labels)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{origin}: features and labels must be numeric arrays ({exc})") from exc
    if x.ndim < 1 or y.ndim < 1:
        raise ValueError(f"{origin}: features {x.shape} and labels {y.shape} need a row axis")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"{origin}: {x.shape[0]} feature rows but {y.shape[0]} labels")
    if feature_shape is not None:
        width = int(np.prod(x.shape[1:])) if x.ndim > 1 else 1
        if width != int(np.prod(feature_shape)):
            msg = f"{origin}: rows of {x.shape[1:]} values cannot be shaped {feature_shape}"
            raise ValueError(msg)
        x = x.reshape(x.shape[0], *feature_shape)
    if y.dtype.kind == "b" or y.dtype.kind not in "iuf":
        raise ValueError(f"{origin}: labels must be numbers, got dtype {y.dtype}")
    if y.dtype.kind == "f":
        return LocalData(features=x, labels=y.astype(np.float32))
    return LocalData(features=x, labels=y.astype(np.int64))


class DatasetShardSource:
    """One device's shard of a bundled dataset's training split (the same every round).

    Parameters
    ----------
    data:
        Which dataset (``data.source``), which shard, of how many, dealt how.
    """

    def __init__(self, data: DataConfig) -> None:
        split = load_dataset(data.source, seed=0)
        params = {"alpha": data.alpha} if data.partition == "dirichlet" else {}
        partitioner = get_partitioner(data.partition, **params)
        shards = partitioner(split.train_y, data.num_partitions, np.random.default_rng(data.seed))
        indices = shards[data.partition_index]
        self._data = LocalData(
            features=split.train_x[indices].astype(np.float32),
            labels=split.train_y[indices].astype(np.int64),
        )

    def read(self, round_number: int) -> LocalData:
        """Return the shard; a bundled dataset does not change between rounds."""
        return self._data


DigitsShardSource = DatasetShardSource
"""The digits' shard source (its first name; any bundled dataset now)."""


class NpzSource:
    """Reads ``features`` and ``labels`` from an ``.npz`` file at every round.

    The file is re-read each round so a device pipeline that appends new readings is
    picked up without restarting the agent. ``allow_pickle`` stays off.
    """

    def __init__(self, path: Path, feature_shape: tuple[int, ...] | None = None) -> None:
        self._path = path
        self._shape = feature_shape

    def read(self, round_number: int) -> LocalData:
        """Load the file; raise ``ValueError`` when it cannot be read or lacks the arrays."""
        try:
            with np.load(self._path, allow_pickle=False) as archive:
                features, labels = archive["features"], archive["labels"]
        except KeyError as exc:
            msg = f"{self._path} must hold arrays 'features' and 'labels'"
            raise ValueError(msg) from exc
        except (OSError, ValueError, EOFError) as exc:
            raise ValueError(f"{self._path}: cannot read ({exc})") from exc
        return as_local_data(features, labels, str(self._path), self._shape)


class CsvSource:
    """Reads a CSV table with a header row at every round.

    The ``label_columns`` are the targets (one class-index column, or one per regression
    output); every other column is a feature, in file order. Empty cells read as NaN
    (training drops such rows). Re-read each round, like :class:`NpzSource`.
    """

    def __init__(
        self,
        path: Path,
        label_columns: list[str],
        feature_shape: tuple[int, ...] | None = None,
    ) -> None:
        self._path = path
        self._labels = list(label_columns)
        self._shape = feature_shape

    def read(self, round_number: int) -> LocalData:
        """Load the table; raise ``ValueError`` when it cannot be read or parsed."""
        origin = str(self._path)
        try:
            with self._path.open(newline="", encoding="utf-8") as handle:
                rows = list(csv.reader(handle))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise ValueError(f"{origin}: cannot read ({exc})") from exc
        if not rows:
            raise ValueError(f"{origin}: empty file (a header row is needed)")
        header = [name.strip() for name in rows[0]]
        missing = [name for name in self._labels if name not in header]
        if missing:
            raise ValueError(f"{origin}: no column {missing[0]!r} in the header {header}")
        target = [header.index(name) for name in self._labels]
        feature = [i for i in range(len(header)) if i not in target]
        body = [row for row in rows[1:] if any(cell.strip() for cell in row)]
        try:
            table = np.array(
                [[float(cell) if cell.strip() else np.nan for cell in row] for row in body],
                dtype=np.float64,
            ).reshape(len(body), len(header))
        except ValueError as exc:  # a word in a number's place, or a ragged row
            raise ValueError(f"{origin}: not a numeric table ({exc})") from exc
        labels = table[:, target]
        integral = np.isfinite(labels).all() and np.array_equal(labels, np.round(labels))
        if len(target) == 1:
            labels = labels[:, 0]
            # Class indices come back as int64, real targets as float32.
            if integral:
                return as_local_data(
                    table[:, feature], labels.astype(np.int64), origin, self._shape
                )
        return as_local_data(table[:, feature], labels.astype(np.float32), origin, self._shape)


class FunctionSource:
    """Calls a user's ``package.module:name`` for each round's data (a live pipeline).

    The callable takes the round number (or nothing, if it takes no parameter) and returns
    ``(features, labels)``, a mapping with those keys, or a :class:`LocalData`. It is
    imported on the first read, so a typo or a missing package skips rounds with the reason
    rather than stopping the agent; anything it raises skips that round the same way.
    """

    def __init__(self, target: str, feature_shape: tuple[int, ...] | None = None) -> None:
        self.target = target
        self._shape = feature_shape
        self._function: Callable[..., object] | None = None

    def _resolve(self) -> Callable[..., object]:
        if self._function is None:
            module_name, _, name = self.target.partition(":")
            try:
                found: Any = importlib.import_module(module_name)
                for part in name.split("."):
                    found = getattr(found, part)
            except Exception as exc:
                raise ValueError(f"data function {self.target}: cannot import ({exc})") from exc
            if not callable(found):
                raise ValueError(f"data function {self.target}: not callable")
            self._function = found
        return self._function

    def read(self, round_number: int) -> LocalData:
        """Call the function; raise ``ValueError`` naming it for whatever goes wrong."""
        function = self._resolve()
        origin = f"data function {self.target}"
        try:
            takes_round = bool(inspect.signature(function).parameters)
        except (TypeError, ValueError):  # builtins without a signature: give the round
            takes_round = True
        try:
            result = function(round_number) if takes_round else function()
        except Exception as exc:
            raise ValueError(f"{origin} raised {type(exc).__name__}: {exc}") from exc
        if isinstance(result, LocalData):
            return as_local_data(result.features, result.labels, origin, self._shape)
        if isinstance(result, Mapping) and {"features", "labels"} <= set(result):
            return as_local_data(result["features"], result["labels"], origin, self._shape)
        if isinstance(result, tuple) and len(result) == 2:
            return as_local_data(result[0], result[1], origin, self._shape)
        msg = f"{origin} returned {type(result).__name__}; expected (features, labels)"
        raise ValueError(msg)


def build_source(data: DataConfig) -> SensorSource:
    """Return the source named by ``data.source``."""
    shape = tuple(data.feature_shape) if data.feature_shape is not None else None
    if data.source == "npz":
        assert data.path is not None  # noqa: S101 - the config validator guarantees it
        return NpzSource(data.path, shape)
    if data.source == "csv":
        assert data.path is not None  # noqa: S101 - the config validator guarantees it
        return CsvSource(data.path, data.label_columns, shape)
    if data.source == "function":
        assert data.function is not None  # noqa: S101 - the config validator guarantees it
        return FunctionSource(data.function, shape)
    return DatasetShardSource(data)
