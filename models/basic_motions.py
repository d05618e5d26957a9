"""BasicMotions: a real wearable-sensor task (accelerometer + gyroscope) that works offline.

BasicMotions (UEA multivariate time-series archive, Bagnall et al. 2018,
arXiv:1811.00075) was recorded by four students wearing a smart watch while standing,
walking, running and playing badminton: 3-axis accelerometer and 3-axis gyroscope at
10 Hz for 10 s, 80 recordings of 6 channels x 100 steps, 4 classes, the archive's own
split of 40 training and 40 test recordings. sktime ships the two ``.ts`` files inside its
wheel (``sktime/datasets/data/BasicMotions/``, 456 kB), under sktime's BSD-3-Clause licence
(the archive asks users to cite the paper above). They are read here directly, without
importing sktime (or pandas): a device or the coordinator pays nothing for the package but
its files on disk.

Each recording is cut into overlapping windows of :data:`WINDOW` steps every
:data:`STRIDE` steps (6 per recording: 240 training and 240 test windows), as a device cuts
its live stream, so a fleet of 20 devices has a dozen samples each. Readings are scaled per
channel to [0, 1] by the training split's 0.5th and 99.5th percentiles (and clipped there),
the range the sensor faults assume.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from byzedge.models.datasets import DigitsSplit

__all__ = [
    "CHANNELS",
    "CLASSES",
    "NUM_CLASSES",
    "STRIDE",
    "WINDOW",
    "basic_motions_dir",
    "load_basic_motions_split",
    "read_ts",
    "windows",
]

CHANNELS = ("acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z")
CLASSES = ("Standing", "Running", "Walking", "Badminton")  # the files' @classLabel order
NUM_CLASSES = len(CLASSES)
WINDOW = 50
STRIDE = 10
_LOW, _HIGH = 0.5, 99.5


def basic_motions_dir() -> Path:
    """Where sktime's wheel keeps BasicMotions (found without importing sktime).

    Raises
    ------
    FileNotFoundError
        When sktime is not installed (``pip install 'byzedge[sim]'``).
    """
    spec = importlib.util.find_spec("sktime")  # a top-level spec: nothing is imported
    if spec is None or not spec.submodule_search_locations:
        msg = "the BasicMotions dataset ships with sktime: pip install 'byzedge[sim]'"
        raise FileNotFoundError(msg)
    return Path(next(iter(spec.submodule_search_locations))) / "datasets/data/BasicMotions"


def read_ts(
    path: Path, classes: tuple[str, ...] = CLASSES
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Read an equal-length multivariate ``.ts`` file (sktime's text format).

    Each data line is ``c1_v1,c1_v2,...:c2_v1,...:...:label``; ``#`` lines and ``@``
    header lines are skipped.

    Returns
    -------
    tuple
        float32 ``(n, channels, length)`` and int64 labels ``(n,)`` indexing ``classes``.

    Raises
    ------
    ValueError
        If a line has another number of channels or steps than the first, or an unknown
        class.
    """
    series: list[list[list[float]]] = []
    labels: list[int] = []
    in_data = False
    with path.open(encoding="utf-8") as handle:
        for raw in handle:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("@"):
                in_data = line.lower().startswith("@data") or in_data
                continue
            if not in_data:
                continue
            *channels, label = line.split(":")
            if label not in classes:
                raise ValueError(f"{path}: unknown class {label!r}; known: {', '.join(classes)}")
            series.append([[float(v) for v in channel.split(",")] for channel in channels])
            labels.append(classes.index(label))
    try:
        x = np.asarray(series, dtype=np.float32)
    except ValueError as exc:  # ragged: channels or lengths differ between recordings
        raise ValueError(f"{path}: recordings differ in channels or length") from exc
    if x.ndim != 3:
        raise ValueError(f"{path}: expected (n, channels, length) recordings, got {x.shape}")
    return x, np.asarray(labels, dtype=np.int64)


def windows(
    x: NDArray[np.float32], y: NDArray[np.int64], window: int = WINDOW, stride: int = STRIDE
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Cut each recording ``(channels, length)`` into windows; each window keeps its label.

    Returns ``(n * k, channels, window)`` and ``(n * k,)``, recording by recording, where
    ``k = (length - window) // stride + 1``.
    """
    if window < 1 or stride < 1 or window > x.shape[2]:
        raise ValueError(f"window {window} and stride {stride} must fit length {x.shape[2]}")
    starts = range(0, x.shape[2] - window + 1, stride)
    cut = np.stack([x[:, :, s : s + window] for s in starts], axis=1)  # (n, k, c, window)
    count = cut.shape[1]
    return (
        np.ascontiguousarray(cut.reshape(-1, x.shape[1], window), dtype=np.float32),
        np.repeat(y, count).astype(np.int64),
    )


def load_basic_motions_split(seed: int = 0) -> DigitsSplit:
    """The archive's training and test recordings, windowed and scaled to [0, 1].

    Parameters
    ----------
    seed:
        Seed of the order of the training windows (the split itself is the archive's).

    Returns
    -------
    DigitsSplit
        ``train_x``/``test_x`` float32 ``(240, 6, WINDOW)``; labels int64 ``0..3``
        (:data:`CLASSES`).
    """
    folder = basic_motions_dir()
    train_x, train_y = windows(*read_ts(folder / "BasicMotions_TRAIN.ts"))
    test_x, test_y = windows(*read_ts(folder / "BasicMotions_TEST.ts"))
    low = np.percentile(train_x, _LOW, axis=(0, 2), keepdims=True)
    high = np.percentile(train_x, _HIGH, axis=(0, 2), keepdims=True)
    scale = np.where(high > low, high - low, 1.0)

    def scaled(x: NDArray[np.float32]) -> NDArray[np.float32]:
        return np.clip((x - low) / scale, 0.0, 1.0).astype(np.float32)

    order = np.random.default_rng(seed).permutation(train_y.shape[0])
    return DigitsSplit(
        train_x=np.ascontiguousarray(scaled(train_x)[order]),
        train_y=np.ascontiguousarray(train_y[order]),
        test_x=np.ascontiguousarray(scaled(test_x)),
        test_y=test_y,
    )
