"""Datasets for the demo and simulator: scikit-learn's 8x8 digits and sktime's BasicMotions.

:func:`load_dataset` serves both by name (:data:`DATASETS`); BasicMotions, a wearable
sensor task of 6-channel windows, lives in :mod:`byzedge.models.basic_motions`.

The digits set ships inside scikit-learn's wheel (``sklearn/datasets/data/digits.csv.gz``,
no download), so the demo works offline. It is read from that file directly and split here,
without importing scikit-learn: importing it (and SciPy with it) costs an agent about
80 MB of resident memory for the rest of its life (benchmarks/results/agent.md). The split
is the stratified shuffle split scikit-learn's ``train_test_split(..., stratify=y)`` makes,
draw for draw, so results do not depend on which of the two produced it
(tests/unit/test_models_datasets.py compares them).
"""

from __future__ import annotations

import gzip
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "DATASETS",
    "DEFAULT_MODELS",
    "DIGITS_NUM_CLASSES",
    "DatasetSplit",
    "DigitsSplit",
    "digits_file",
    "load_dataset",
    "load_digits_split",
    "load_validation_npz",
    "stratified_split",
]

DIGITS_NUM_CLASSES = 10
# Pixel intensities in sklearn's digits are integers 0..16.
_DIGITS_MAX_VALUE = 16.0


@dataclass(frozen=True, slots=True)
class DigitsSplit:
    """A train/test split of a dataset (the digits set, or any other: :data:`DatasetSplit`).

    Attributes
    ----------
    train_x, test_x:
        float32 arrays ``(n, *sample_shape)`` with values in ``[0, 1]``: ``(n, 64)`` for
        the digits, ``(n, 6, 50)`` windows for BasicMotions.
    train_y, test_y:
        int64 arrays ``(n,)`` with class labels (``0..9`` for the digits).
    """

    train_x: NDArray[np.float32]
    train_y: NDArray[np.int64]
    test_x: NDArray[np.float32]
    test_y: NDArray[np.int64]


DatasetSplit = DigitsSplit
"""Any dataset's train/test split (the digits' class, kept under its first name)."""

DATASETS: tuple[str, ...] = ("digits", "basic-motions")
"""Names :func:`load_dataset` knows (scenario ``dataset``, ``byzedge demo --dataset``)."""

# The model each dataset is demonstrated with (its registry name).
DEFAULT_MODELS: dict[str, str] = {"digits": "mlp", "basic-motions": "sensor-cnn"}


def load_dataset(name: str, seed: int = 0) -> DatasetSplit:
    """Load the dataset called ``name`` (one of :data:`DATASETS`), split for train and test.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the known ones).
    FileNotFoundError
        When the package that ships the data is not installed.
    """
    if name == "digits":
        return load_digits_split(seed=seed)
    if name == "basic-motions":
        # Imported here: basic_motions builds on this module's split class.
        from byzedge.models.basic_motions import load_basic_motions_split  # noqa: PLC0415

        return load_basic_motions_split(seed=seed)
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")


def load_validation_npz(path: Path | None) -> DatasetSplit:
    """A held-out set from an ``.npz`` of ``features`` and ``labels`` (the test half only).

    Labels stay as stored: integers are class indices, floats regression targets.

    Raises
    ------
    ValueError
        When the file lacks the arrays or their row counts differ.
    OSError
        When it cannot be read.
    """
    if path is None:
        raise ValueError("a validation .npz path is needed")
    with np.load(path, allow_pickle=False) as archive:
        try:
            x = np.asarray(archive["features"], dtype=np.float32)
            y = np.asarray(archive["labels"])
        except KeyError as exc:
            raise ValueError(f"{path} must hold arrays 'features' and 'labels'") from exc
    if x.ndim < 2 or y.shape[:1] != x.shape[:1]:
        raise ValueError(f"{path}: features {x.shape} and labels {y.shape} disagree")
    empty_x = np.zeros((0, *x.shape[1:]), dtype=np.float32)
    return DigitsSplit(train_x=empty_x, train_y=y[:0], test_x=x, test_y=y)


def load_digits_split(test_fraction: float = 0.2, seed: int = 0) -> DigitsSplit:
    """Load the 1797 digits and split them, stratified by label, deterministically.

    Parameters
    ----------
    test_fraction:
        Fraction of samples held out for testing, in ``(0, 1)``.
    seed:
        Seed of the split; the same seed gives the same split.

    Raises
    ------
    ValueError
        If ``test_fraction`` is not in ``(0, 1)``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    table = _read_digits_table()  # (1797, 65): 64 pixel values, then the label
    x = (table[:, :-1] / _DIGITS_MAX_VALUE).astype(np.float32)
    y = table[:, -1].astype(np.int64)
    train, test = stratified_split(y, test_fraction, seed)
    return DigitsSplit(
        train_x=np.ascontiguousarray(x[train], dtype=np.float32),
        train_y=np.ascontiguousarray(y[train], dtype=np.int64),
        test_x=np.ascontiguousarray(x[test], dtype=np.float32),
        test_y=np.ascontiguousarray(y[test], dtype=np.int64),
    )


def digits_file() -> Path:
    """Where scikit-learn's wheel keeps the digits (found without importing scikit-learn).

    Raises
    ------
    FileNotFoundError
        When scikit-learn is not installed (``pip install 'byzedge[sim]'``).
    """
    spec = importlib.util.find_spec("sklearn")  # a top-level spec: nothing is imported
    if spec is None or not spec.submodule_search_locations:
        msg = "the digits dataset ships with scikit-learn: pip install 'byzedge[sim]'"
        raise FileNotFoundError(msg)
    return Path(next(iter(spec.submodule_search_locations))) / "datasets/data/digits.csv.gz"


def _read_digits_table() -> NDArray[np.float64]:
    with gzip.open(digits_file(), "rt") as handle:
        return np.loadtxt(handle, delimiter=",", dtype=np.float64, ndmin=2)


def stratified_split(
    labels: NDArray[np.int64], test_fraction: float, seed: int
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Split sample indices into train and test, keeping each label's share in both.

    The procedure of scikit-learn's ``StratifiedShuffleSplit`` (one split), with a
    ``numpy.random.RandomState(seed)`` drawing in the same order: ``ceil(test_fraction *
    n)`` test samples; each label's train and then test counts are the largest-remainder
    rounding of its share, ties broken at random; each label's samples (in index order)
    are permuted and cut into train and test; both lists are permuted once more.

    Returns
    -------
    train, test:
        Index arrays into ``labels``.
    """
    n = labels.shape[0]
    n_test = math.ceil(test_fraction * n)
    n_train = n - n_test
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    by_label = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)
    train_counts = _share_counts(counts, n_train, rng)
    test_counts = _share_counts(counts - train_counts, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for indices, n_label_train, n_label_test in zip(
        by_label, train_counts, test_counts, strict=True
    ):
        shuffled = indices[rng.permutation(indices.shape[0])]
        train.extend(shuffled[:n_label_train].tolist())
        test.extend(shuffled[n_label_train : n_label_train + n_label_test].tolist())
    return rng.permutation(train), rng.permutation(test)


def _share_counts(
    counts: NDArray[np.int64], draws: int, rng: np.random.RandomState
) -> NDArray[np.int64]:
    """Split ``draws`` over the labels in proportion to ``counts`` (largest remainders)."""
    exact = counts / counts.sum() * draws
    shares = np.floor(exact)
    missing = int(draws - shares.sum())
    remainders = exact - shares
    for value in np.sort(np.unique(remainders))[::-1]:
        if missing <= 0:
            break
        (tied,) = np.nonzero(remainders == value)
        chosen = rng.choice(tied, size=min(len(tied), missing), replace=False)
        shares[chosen] += 1
        missing -= len(chosen)
    result: NDArray[np.int64] = shares.astype(np.int64)
    return result
