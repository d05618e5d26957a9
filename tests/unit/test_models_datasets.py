from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from byzedge.models import load_digits_split


def test_digits_split_has_the_requested_test_fraction() -> None:
    split = load_digits_split(test_fraction=0.2)
    total = split.train_x.shape[0] + split.test_x.shape[0]
    assert total == 1797
    assert abs(split.test_x.shape[0] - 0.2 * total) <= 1


def test_digits_features_are_float32_in_unit_range() -> None:
    split = load_digits_split()
    assert split.train_x.dtype == np.float32
    assert split.train_x.shape[1] == 64
    assert float(split.train_x.min()) >= 0.0
    assert float(split.train_x.max()) == 1.0


def test_digits_labels_are_int64_classes() -> None:
    split = load_digits_split()
    assert split.train_y.dtype == np.int64
    assert set(np.unique(split.test_y)) == set(range(10))


def test_digits_split_is_stratified() -> None:
    split = load_digits_split()
    train = np.bincount(split.train_y) / split.train_y.size
    test = np.bincount(split.test_y) / split.test_y.size
    assert np.abs(train - test).max() < 0.01


def test_same_seed_gives_the_same_split() -> None:
    a, b = load_digits_split(seed=3), load_digits_split(seed=3)
    np.testing.assert_array_equal(a.test_x, b.test_x)
    np.testing.assert_array_equal(a.train_y, b.train_y)


def test_different_seeds_give_different_splits() -> None:
    a, b = load_digits_split(seed=1), load_digits_split(seed=2)
    assert not np.array_equal(a.test_y, b.test_y)


def test_bad_test_fraction_raises() -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits_split(test_fraction=1.0)


@pytest.mark.parametrize(("test_fraction", "seed"), [(0.2, 0), (0.25, 3), (0.5, 11)])
def test_the_split_is_scikit_learns_stratified_split_draw_for_draw(
    test_fraction: float, seed: int
) -> None:
    from sklearn.datasets import load_digits  # noqa: PLC0415
    from sklearn.model_selection import train_test_split  # noqa: PLC0415

    bunch = load_digits()
    x = (np.asarray(bunch.data, dtype=np.float64) / 16.0).astype(np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    train_x, test_x, train_y, test_y = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )

    split = load_digits_split(test_fraction, seed)

    np.testing.assert_array_equal(split.train_x, train_x)
    np.testing.assert_array_equal(split.test_x, test_x)
    np.testing.assert_array_equal(split.train_y, train_y)
    np.testing.assert_array_equal(split.test_y, test_y)


def test_loading_the_digits_does_not_import_scikit_learn() -> None:
    code = (
        "import sys; from models.datasets import load_digits_split; load_digits_split(); "
        "assert not any(m.split('.')[0] in ('sklearn', 'scipy') for m in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
