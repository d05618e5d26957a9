from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import pytest

from byzedge.edge_agent.seams import LocalData, SensorSource
from byzedge.faults import (
    SENSOR_FAULTS,
    Drift,
    Dropout,
    SensorFault,
    SensorNoise,
    SignFlip,
    StuckAt,
)


class RoundSource:
    """Fixed data whose features depend on the round, so frozen readings are visible."""

    def __init__(self, rows: int = 200, value: float = 0.5, step: float = 0.0) -> None:
        self.rows = rows
        self.value = value
        self.step = step

    def read(self, round_number: int) -> LocalData:
        level = self.value + self.step * round_number
        features = np.full((self.rows, 64), level, dtype=np.float32)
        labels = np.arange(self.rows, dtype=np.int64) % 10
        return LocalData(features=features, labels=labels)


def test_round_source_is_a_sensor_source() -> None:
    source: SensorSource = RoundSource()
    assert source.read(0).features.shape == (200, 64)


def test_stuck_at_freezes_readings_of_first_faulty_round() -> None:
    fault = StuckAt(RoundSource(step=0.01), start_round=3)
    first = fault.read(3).features
    for round_number in (4, 7, 20):
        np.testing.assert_array_equal(fault.read(round_number).features, first)
    np.testing.assert_allclose(first, 0.53, rtol=1e-6)


def test_stuck_at_with_value_reads_the_constant() -> None:
    fault = StuckAt(RoundSource(step=0.01), value=0.25)
    for round_number in (0, 5):
        np.testing.assert_array_equal(fault.read(round_number).features, np.float32(0.25))


def test_stuck_at_freezes_the_same_values_whatever_order_rounds_are_read() -> None:
    forward = StuckAt(RoundSource(step=0.01), start_round=2, probability=0.5, seed=4)
    backward = StuckAt(RoundSource(step=0.01), start_round=2, probability=0.5, seed=4)
    rounds = range(2, 30)
    active = [k for k in rounds if forward.is_active(k)]
    expected = {k: forward.read(k).features for k in active}
    for k in reversed(active):
        np.testing.assert_array_equal(backward.read(k).features, expected[k])


def test_stuck_at_intensity_is_the_fraction_of_stuck_channels() -> None:
    fault = StuckAt(RoundSource(step=0.01), intensity=0.25, seed=1)
    first = fault.read(0).features
    later = fault.read(10).features
    stuck = np.all(later == first, axis=0)
    assert stuck.sum() == 16
    np.testing.assert_array_equal(np.flatnonzero(stuck), fault.stuck_columns(64))


def test_stuck_at_keeps_labels() -> None:
    source = RoundSource()
    fault = StuckAt(source, value=0.0)
    np.testing.assert_array_equal(fault.read(1).labels, source.read(1).labels)


def test_sensor_noise_has_the_requested_std() -> None:
    fault = SensorNoise(RoundSource(rows=500), intensity=0.05, seed=3)
    noise = fault.read(0).features - 0.5
    assert abs(float(noise.std()) - 0.05) < 0.002
    assert abs(float(noise.mean())) < 0.002


def test_sensor_noise_output_stays_in_range() -> None:
    fault = SensorNoise(RoundSource(value=0.95), intensity=0.5)
    features = fault.read(0).features
    assert features.dtype == np.float32
    assert features.min() >= 0.0
    assert features.max() <= 1.0


def test_sensor_noise_redraws_each_round() -> None:
    fault = SensorNoise(RoundSource(), intensity=0.05)
    assert not np.array_equal(fault.read(0).features, fault.read(1).features)


def test_drift_grows_linearly_with_the_round() -> None:
    fault = Drift(RoundSource(value=0.1), intensity=0.02, start_round=2)
    for round_number in (2, 3, 10):
        expected = 0.1 + 0.02 * (round_number - 2 + 1)
        np.testing.assert_allclose(fault.read(round_number).features, expected, rtol=1e-5)


def test_drift_saturates_at_the_top_of_the_range() -> None:
    fault = Drift(RoundSource(value=0.5), intensity=0.1)
    np.testing.assert_array_equal(fault.read(50).features, np.float32(1.0))


def test_negative_drift_moves_readings_down() -> None:
    fault = Drift(RoundSource(value=0.5), intensity=-0.1)
    np.testing.assert_allclose(fault.read(1).features, 0.3, rtol=1e-5)


def test_dropout_inserts_nan_at_the_requested_fraction_of_rows() -> None:
    fault = Dropout(RoundSource(rows=2000), intensity=0.3, seed=2)
    features = fault.read(0).features
    lost_rows = np.isnan(features).all(axis=1)
    assert np.isnan(features).any(axis=1).sum() == lost_rows.sum()
    assert abs(float(lost_rows.mean()) - 0.3) < 0.04


def test_dropout_per_value_inserts_nan_at_the_requested_fraction() -> None:
    fault = Dropout(RoundSource(rows=500), intensity=0.2, unit="value", seed=2)
    features = fault.read(0).features
    assert abs(float(np.isnan(features).mean()) - 0.2) < 0.01
    np.testing.assert_array_equal(features[~np.isnan(features)], np.float32(0.5))


def test_dropout_does_not_modify_the_wrapped_sources_arrays() -> None:
    data = RoundSource().read(0)

    class Fixed:
        def read(self, round_number: int) -> LocalData:
            return data

    Dropout(Fixed(), intensity=1.0).read(0)
    assert not np.isnan(data.features).any()


def test_fault_passes_data_through_before_start_round() -> None:
    source = RoundSource()
    fault = Drift(source, intensity=0.1, start_round=5)
    for round_number in range(5):
        np.testing.assert_array_equal(
            fault.read(round_number).features, source.read(round_number).features
        )
    assert not np.array_equal(fault.read(5).features, source.read(5).features)


def test_probability_zero_never_acts() -> None:
    source = RoundSource()
    fault = SensorNoise(source, intensity=0.1, probability=0.0)
    for round_number in range(20):
        np.testing.assert_array_equal(fault.read(round_number).features, source.read(0).features)


def test_probability_makes_the_fault_intermittent_at_that_rate() -> None:
    fault = SensorNoise(RoundSource(rows=1), intensity=0.1, probability=0.3, seed=9)
    active = [fault.is_active(k) for k in range(2000)]
    assert abs(np.mean(active) - 0.3) < 0.04


def test_inactive_round_passes_data_through_unchanged() -> None:
    source = RoundSource()
    fault = SensorNoise(source, intensity=0.1, probability=0.5, seed=9)
    inactive = next(k for k in range(100) if not fault.is_active(k))
    np.testing.assert_array_equal(fault.read(inactive).features, source.read(inactive).features)


def test_rereading_a_round_gives_the_same_data() -> None:
    fault = Dropout(RoundSource(), intensity=0.5, seed=5)
    np.testing.assert_array_equal(fault.read(4).features, fault.read(4).features)


def test_same_seed_and_round_give_the_same_data_across_instances() -> None:
    first = SensorNoise(RoundSource(), intensity=0.1, probability=0.5, seed=11)
    second = SensorNoise(RoundSource(), intensity=0.1, probability=0.5, seed=11)
    for round_number in (7, 3, 7, 0):
        np.testing.assert_array_equal(
            first.read(round_number).features, second.read(round_number).features
        )


def test_different_seeds_give_different_data() -> None:
    first = SensorNoise(RoundSource(), intensity=0.1, seed=1)
    second = SensorNoise(RoundSource(), intensity=0.1, seed=2)
    assert not np.array_equal(first.read(0).features, second.read(0).features)


def test_noise_draws_do_not_depend_on_probability() -> None:
    always = SensorNoise(RoundSource(), intensity=0.1, seed=1)
    sometimes = SensorNoise(RoundSource(), intensity=0.1, probability=0.5, seed=1)
    active = next(k for k in range(100) if sometimes.is_active(k))
    np.testing.assert_array_equal(always.read(active).features, sometimes.read(active).features)


def test_nan_readings_stay_nan_under_noise() -> None:
    noisy = SensorNoise(Dropout(RoundSource(), intensity=0.5, seed=1), intensity=0.1)
    dropped = Dropout(RoundSource(), intensity=0.5, seed=1)
    np.testing.assert_array_equal(
        np.isnan(noisy.read(0).features), np.isnan(dropped.read(0).features)
    )


@pytest.mark.parametrize(
    ("build", "param"),
    [
        (lambda s: SensorNoise(s, intensity=-0.1), "intensity"),
        (lambda s: SensorNoise(s, intensity=float("nan")), "intensity"),
        (lambda s: Drift(s, intensity=float("inf")), "intensity"),
        (lambda s: Dropout(s, intensity=1.5), "intensity"),
        (lambda s: Dropout(s, unit="pixel"), "unit"),  # type: ignore[arg-type]
        (lambda s: StuckAt(s, intensity=2.0), "intensity"),
        (lambda s: StuckAt(s, value=-1.0), "value"),
        (lambda s: Drift(s, start_round=-1), "start_round"),
        (lambda s: Drift(s, start_round=1.5), "start_round"),  # type: ignore[arg-type]
        (lambda s: Drift(s, probability=1.01), "probability"),
        (lambda s: Drift(s, seed=-3), "seed"),
    ],
)
def test_bad_sensor_fault_parameter_raises_value_error_naming_it(
    build: Callable[[RoundSource], object], param: str
) -> None:
    with pytest.raises(ValueError, match=param):
        build(RoundSource())


def test_negative_round_is_refused() -> None:
    with pytest.raises(ValueError, match="round_number"):
        Drift(RoundSource()).read(-1)


def test_every_sensor_faults_signature_lists_its_defaults_in_full() -> None:
    signatures = {
        name: str(inspect.signature(cls)).replace("'", "") for name, cls in SENSOR_FAULTS.items()
    }
    schedule = (
        "channels: list[int] | None = None, "
        "start_round: int = 0, probability: float = 1.0, seed: int = 0"
    )

    assert signatures["drift"] == f"(source: SensorSource, *, intensity: float = 0.01, {schedule})"
    assert signatures["spikes"] == (
        f"(source: SensorSource, *, intensity: float = 0.05, magnitude: float = 1.0, {schedule})"
    )


def test_no_intensity_means_the_faults_own_default() -> None:
    assert Drift(RoundSource()).intensity == 0.01
    assert Drift(RoundSource(), intensity=None).intensity == 0.01
    assert StuckAt(RoundSource(), value=0.5).intensity == 1.0


def test_sensor_faults_and_attacks_share_one_schedule() -> None:
    fault = Drift(RoundSource(), start_round=2, probability=0.5, seed=7)
    attack = SignFlip(start_round=2, probability=0.5, seed=7)

    assert type(fault.schedule) is type(attack.schedule)
    assert (fault.start_round, fault.probability, fault.seed) == (2, 0.5, 7)


def test_a_sensor_fault_class_must_state_its_intensity_default_and_check() -> None:
    with pytest.raises(TypeError, match="intensity= and check="):

        class Vague(SensorFault):  # the class statement itself is refused
            name: ClassVar[str] = "vague"

            def _apply(
                self, data: LocalData, round_number: int, rng: np.random.Generator
            ) -> LocalData:
                return data
