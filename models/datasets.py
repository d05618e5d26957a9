"""Datasets for the demo and simulator; currently scikit-learn's bundled 8x8 digits.

The digits set ships inside scikit-learn (no download), so the demo works offline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["DIGITS_NUM_CLASSES", "DigitsSplit", "load_digits_split"]

DIGITS_NUM_CLASSES = 10
# Pixel intensities in sklearn's digits are integers 0..16.
_DIGITS_MAX_VALUE = 16.0


@dataclass(frozen=True, slots=True)
class DigitsSplit:
    """A train/test split of the digits set.

    Attributes
    ----------
    train_x, test_x:
        float32 arrays ``(n, 64)`` with values in ``[0, 1]``.
    train_y, test_y:
        int64 arrays ``(n,)`` with labels ``0..9``.
    """

    train_x: NDArray[np.float32]
    train_y: NDArray[np.int64]
    test_x: NDArray[np.float32]
    test_y: NDArray[np.int64]


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
    # Imported here: the coordinator and devices need scikit-learn only for the demo data.
    from sklearn.datasets import load_digits  # noqa: PLC0415
    from sklearn.model_selection import train_test_split  # noqa: PLC0415

    bunch = load_digits()
    x = (np.asarray(bunch.data, dtype=np.float64) / _DIGITS_MAX_VALUE).astype(np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    train_x, test_x, train_y, test_y = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return DigitsSplit(
        train_x=np.ascontiguousarray(train_x, dtype=np.float32),
        train_y=np.ascontiguousarray(train_y, dtype=np.int64),
        test_x=np.ascontiguousarray(test_x, dtype=np.float32),
        test_y=np.ascontiguousarray(test_y, dtype=np.int64),
    )
