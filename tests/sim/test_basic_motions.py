"""BasicMotions, the bundled sensor task: read offline from sktime's wheel, learnt by sensor-cnn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from byzedge.fleet_sim.scenario import load_scenario
from byzedge.fleet_sim.simulator import run_scenario
from byzedge.models.basic_motions import (
    basic_motions_dir,
    load_basic_motions_split,
    read_ts,
    windows,
)
from byzedge.models.datasets import load_dataset

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy/examples/scenario-basic-motions.toml"


def test_the_files_ship_inside_the_installed_sktime_wheel() -> None:
    folder = basic_motions_dir()
    assert (folder / "BasicMotions_TRAIN.ts").stat().st_size > 200_000
    x, y = read_ts(folder / "BasicMotions_TEST.ts")
    assert x.shape == (40, 6, 100)
    assert np.bincount(y).tolist() == [10, 10, 10, 10]


def test_the_split_is_240_windows_of_6_channels_scaled_to_the_unit_range() -> None:
    split = load_dataset("basic-motions")
    assert split.train_x.shape == split.test_x.shape == (240, 6, 50)
    assert split.train_x.dtype == np.float32
    assert split.train_x.min() == 0.0
    assert split.train_x.max() == 1.0
    assert np.bincount(split.train_y).tolist() == [60, 60, 60, 60]
    np.testing.assert_array_equal(load_basic_motions_split().test_x, split.test_x)


def test_windows_keep_each_recordings_label_and_order() -> None:
    x = np.arange(2 * 1 * 10, dtype=np.float32).reshape(2, 1, 10)
    cut, labels = windows(x, np.array([3, 1]), window=4, stride=3)
    assert cut.shape == (6, 1, 4)
    assert labels.tolist() == [3, 3, 3, 1, 1, 1]
    np.testing.assert_array_equal(cut[1, 0], [3, 4, 5, 6])


def test_a_ragged_or_mislabelled_ts_file_is_a_value_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ts"
    bad.write_text("@data\n1,2,3:4,5,6:Walking\n1,2:3,4:Jumping\n")
    with pytest.raises(ValueError, match="unknown class 'Jumping'"):
        read_ts(bad)


def test_sensor_cnn_learns_basic_motions_well_above_chance_in_a_few_rounds() -> None:
    scenario = load_scenario(EXAMPLE, {"rounds": 8, "attack": None, "byzantine_fraction": 0.0})

    result = run_scenario(scenario)

    accuracies = [a for a in result.accuracies if a is not None]
    assert accuracies[-1] is not None
    assert max(accuracies[-3:]) > 0.5
