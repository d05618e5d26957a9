"""spikes, bit-flip and calibration-offset: each fault's effect, onset and intermittency."""

from __future__ import annotations

import numpy as np
import pytest

from byzedge.edge_agent.seams import LocalData
from byzedge.faults import BitFlip, CalibrationOffset, Dropout, FaultConfigError, Spikes


class FixedSource:
    def __init__(self, value: float = 0.5, rows: int = 200) -> None:
        self.features = np.full((rows, 64), value, dtype=np.float32)
        self.labels = np.arange(rows, dtype=np.int64) % 10

    def read(self, round_number: int) -> LocalData:
        return LocalData(features=self.features, labels=self.labels)


def test_spikes_push_about_intensity_of_the_values_to_a_rail() -> None:
    data = Spikes(FixedSource(), intensity=0.1, seed=1).read(0)
    hit = data.features != np.float32(0.5)
    assert 0.08 < hit.mean() < 0.12
    assert set(np.unique(data.features[hit]).tolist()) == {0.0, 1.0}


def test_spikes_of_small_magnitude_move_values_by_that_much() -> None:
    data = Spikes(FixedSource(), intensity=1.0, magnitude=0.2, seed=1).read(0)
    np.testing.assert_allclose(np.abs(data.features - 0.5), 0.2, rtol=1e-5)


def test_bit_flip_changes_exactly_one_bit_of_each_hit_value() -> None:
    source = FixedSource(rows=50)
    data = BitFlip(source, intensity=1.0, seed=3).read(0)
    before = source.features.view(np.uint32)
    after = data.features.view(np.uint32)
    differing_bits = np.unpackbits((before ^ after).view(np.uint8)).reshape(-1, 32).sum(axis=1)
    assert np.all(differing_bits == 1)


def test_bit_flip_can_leave_the_sensor_range() -> None:
    data = BitFlip(FixedSource(rows=100), intensity=1.0, seed=0).read(0)
    finite = data.features[np.isfinite(data.features)]
    assert (finite > 1.0).any() or not np.isfinite(data.features).all()
    assert (finite < 0.0).any()  # the sign bit


def test_bit_flip_rate_matches_intensity() -> None:
    source = FixedSource(rows=400)
    data = BitFlip(source, intensity=0.05, seed=9).read(0)
    changed = data.features.view(np.uint32) != source.features.view(np.uint32)
    assert 0.04 < changed.mean() < 0.06


def test_calibration_offset_applies_gain_then_offset() -> None:
    data = CalibrationOffset(FixedSource(0.4), intensity=0.1, gain=1.5).read(0)
    np.testing.assert_allclose(data.features, 0.7, rtol=1e-6)


def test_calibration_offset_is_constant_over_rounds() -> None:
    fault = CalibrationOffset(FixedSource(0.4), intensity=-0.2)
    np.testing.assert_array_equal(fault.read(1).features, fault.read(30).features)


@pytest.mark.parametrize("cls", [Spikes, BitFlip, CalibrationOffset])
def test_new_sensor_faults_wait_for_their_start_round(cls: type) -> None:
    source = FixedSource()
    fault = cls(source, intensity=0.5, start_round=3, seed=2)
    np.testing.assert_array_equal(fault.read(2).features, source.features)
    assert not np.array_equal(fault.read(3).features, source.features)


def test_intermittent_spikes_act_in_about_probability_of_the_rounds() -> None:
    source = FixedSource(rows=4)
    fault = Spikes(source, intensity=1.0, probability=0.3, seed=5)
    active = [not np.array_equal(fault.read(k).features, source.features) for k in range(400)]
    assert 0.22 < np.mean(active) < 0.38


@pytest.mark.parametrize(
    ("cls", "params", "name"),
    [
        (Spikes, {"intensity": 1.5}, "intensity"),
        (Spikes, {"magnitude": 0.0}, "magnitude"),
        (BitFlip, {"intensity": -0.1}, "intensity"),
        (CalibrationOffset, {"gain": float("nan")}, "gain"),
    ],
)
def test_bad_hyperparameters_are_named(cls: type, params: dict[str, float], name: str) -> None:
    with pytest.raises(FaultConfigError, match=name):
        cls(FixedSource(), **params)


def test_dropout_can_remove_lost_rows_instead_of_nan_filling_them() -> None:
    source = FixedSource(rows=400)
    data = Dropout(source, intensity=0.25, missing=True, seed=1).read(0)
    assert 250 < data.features.shape[0] < 350
    assert data.labels.shape[0] == data.features.shape[0]
    assert not np.isnan(data.features).any()


def test_dropout_missing_needs_whole_rows() -> None:
    with pytest.raises(FaultConfigError, match="missing"):
        Dropout(FixedSource(), unit="value", missing=True)
