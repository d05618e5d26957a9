"""Real sources of a device's local data (the seam the fault injector wraps).

On a device in the field the source is whatever its sensors recorded (here: an ``.npz``
file the device's own pipeline writes); in the demo and simulator each agent reads its
shard of sklearn's bundled digits. Both return the same :class:`LocalData`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from byzedge.edge_agent.config import DataConfig
from byzedge.edge_agent.seams import LocalData, SensorSource
from byzedge.models.datasets import load_digits_split
from byzedge.models.partition import get_partitioner

__all__ = ["DigitsShardSource", "NpzSource", "build_source"]


class DigitsShardSource:
    """One device's shard of the digits training split (the same every round).

    Parameters
    ----------
    data:
        Which shard, of how many, dealt how.
    """

    def __init__(self, data: DataConfig) -> None:
        split = load_digits_split(seed=0)
        params = {"alpha": data.alpha} if data.partition == "dirichlet" else {}
        partitioner = get_partitioner(data.partition, **params)
        shards = partitioner(split.train_y, data.num_partitions, np.random.default_rng(data.seed))
        indices = shards[data.partition_index]
        self._data = LocalData(
            features=split.train_x[indices].astype(np.float32),
            labels=split.train_y[indices].astype(np.int64),
        )

    def read(self, round_number: int) -> LocalData:
        """Return the shard; digits do not change between rounds."""
        return self._data


class NpzSource:
    """Reads ``features`` and ``labels`` from an ``.npz`` file at every round.

    The file is re-read each round so a device pipeline that appends new readings is
    picked up without restarting the agent. ``allow_pickle`` stays off.
    """

    def __init__(self, path: Path) -> None:
        self._path = path

    def read(self, round_number: int) -> LocalData:
        """Load the file; raise ``ValueError`` when it lacks the two arrays."""
        with np.load(self._path, allow_pickle=False) as archive:
            try:
                features = np.asarray(archive["features"], dtype=np.float32)
                labels = np.asarray(archive["labels"], dtype=np.int64)
            except KeyError as exc:
                msg = f"{self._path} must hold arrays 'features' and 'labels'"
                raise ValueError(msg) from exc
        if features.ndim != 2 or labels.shape != (features.shape[0],):
            msg = f"{self._path}: features {features.shape} and labels {labels.shape} disagree"
            raise ValueError(msg)
        return LocalData(features=features, labels=labels)


def build_source(data: DataConfig) -> SensorSource:
    """Return the source named by ``data.source``."""
    if data.source == "npz":
        assert data.path is not None  # noqa: S101 - the config validator guarantees it
        return NpzSource(data.path)
    return DigitsShardSource(data)
