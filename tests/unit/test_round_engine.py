"""The shared server step: anomaly scores -> reputation -> weights -> aggregate -> step."""

from __future__ import annotations

import numpy as np
import pytest

from byzedge.coordinator.aggregation import build
from byzedge.coordinator.anomaly import REASON_NORM, REASON_PERSISTENT, AnomalyDetector, AnomalyFlag
from byzedge.coordinator.reputation import ReputationBook
from byzedge.coordinator.round_engine import RoundSettings, server_step


def _updates() -> np.ndarray:
    rng = np.random.default_rng(0)
    honest = 1.0 + 0.01 * rng.standard_normal((5, 4))
    return np.vstack([honest, -50.0 * np.ones((1, 4))]).astype(np.float32)


IDS = ["a", "b", "c", "d", "e", "evil"]


def test_mean_step_moves_params_by_the_server_rate() -> None:
    updates = np.ones((3, 2), dtype=np.float32)
    result = server_step(
        np.zeros(2, np.float32),
        ["a", "b", "c"],
        updates,
        settings=RoundSettings(server_learning_rate=0.5, anomaly_detection=False),
        reputation=ReputationBook(),
        aggregator=build("mean"),
    )
    np.testing.assert_allclose(result.params, [0.5, 0.5])
    assert result.flagged == ()
    assert result.scores is None
    assert not result.skipped


def test_outlier_is_flagged_and_loses_reputation() -> None:
    book = ReputationBook(decay=0.5)
    result = server_step(
        np.zeros(4, np.float32),
        IDS,
        _updates(),
        settings=RoundSettings(),
        reputation=book,
        aggregator=build("coordinate-median"),
    )
    assert result.flagged == ("evil",)
    assert book.weight("evil") == 0.5
    assert book.weight("a") == 1.0
    assert result.weights is not None
    np.testing.assert_allclose(result.weights, [1, 1, 1, 1, 1, 0.5])


def test_reputation_weights_are_off_when_disabled() -> None:
    result = server_step(
        np.zeros(4, np.float32),
        IDS,
        _updates(),
        settings=RoundSettings(device_reputation=False),
        reputation=ReputationBook(),
        aggregator=build("mean"),
    )
    assert result.weights is None
    assert result.flagged == ("evil",)


def test_misbehaving_devices_lose_reputation_even_when_skipped() -> None:
    book = ReputationBook(decay=0.5)
    params = np.ones(3, np.float32)
    result = server_step(
        params,
        [],
        None,
        settings=RoundSettings(),
        reputation=book,
        aggregator=build("mean"),
        misbehaving=["x"],
    )
    assert result.skipped
    assert result.aggregate is None
    assert result.params is params
    assert book.weight("x") == 0.5


def test_breakdown_falls_back_to_coordinate_median() -> None:
    updates = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    result = server_step(
        np.zeros(2, np.float32),
        ["a", "b"],
        updates,
        settings=RoundSettings(),
        reputation=ReputationBook(),
        aggregator=build("krum", max_byzantine_fraction=0.2),
    )
    assert result.fallback == "coordinate-median"
    np.testing.assert_allclose(result.params, [2.0, 3.0])


def test_mismatched_ids_and_rows_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="device ids"):
        server_step(
            np.zeros(2, np.float32),
            ["a"],
            np.zeros((2, 2), np.float32),
            settings=RoundSettings(),
            reputation=ReputationBook(),
            aggregator=build("mean"),
        )


def _offset_round(rng: np.random.Generator, factor: float) -> np.ndarray:
    updates = (1.0 + 0.01 * rng.standard_normal((6, 4))).astype(np.float32)
    updates[5] *= factor
    return updates


def test_each_flag_carries_the_devices_score_and_reason() -> None:
    updates = _offset_round(np.random.default_rng(0), 10.0)  # "evil" sends 10x the norm
    result = server_step(
        np.zeros(4, np.float32),
        IDS,
        updates,
        settings=RoundSettings(),
        reputation=ReputationBook(),
        aggregator=build("coordinate-median"),
    )
    assert result.scores is not None
    (flag,) = result.flags
    assert isinstance(flag, AnomalyFlag)
    assert flag.device_id == "evil"
    assert flag.reason == REASON_NORM
    assert flag.score == pytest.approx(result.scores.score[IDS.index("evil")])
    assert flag.score > 3.0


def test_a_kept_detector_remembers_devices_across_rounds() -> None:
    rng = np.random.default_rng(1)
    detector = AnomalyDetector()
    book = ReputationBook(decay=0.5)
    results = [
        server_step(
            np.zeros(4, np.float32),
            IDS,
            _offset_round(rng, factor),
            settings=RoundSettings(),
            reputation=book,
            aggregator=build("coordinate-median"),
            detector=detector,
        )
        for factor in (6.0, 2.0)
    ]
    fresh = server_step(
        np.zeros(4, np.float32),
        IDS,
        _offset_round(rng, 2.0),
        settings=RoundSettings(),
        reputation=ReputationBook(),
        aggregator=build("coordinate-median"),
    )
    assert results[0].flagged == ("evil",)
    assert [(f.device_id, f.reason) for f in results[1].flags] == [("evil", REASON_PERSISTENT)]
    assert book.weight("evil") == 0.25
    assert "evil" in detector
    # Without a detector every round starts without history: a moderate offset passes.
    assert fresh.flagged == ()


def test_detector_threshold_comes_from_the_settings() -> None:
    result = server_step(
        np.zeros(4, np.float32),
        IDS,
        _updates(),
        settings=RoundSettings(anomaly_threshold=1e6),
        reputation=ReputationBook(),
        aggregator=build("mean"),
        detector=AnomalyDetector(threshold=3.0),
    )
    assert result.scores is not None
    assert result.scores.threshold == 1e6
    assert result.flagged == ()


def test_fewer_than_three_updates_are_not_scored() -> None:
    detector = AnomalyDetector()
    result = server_step(
        np.zeros(2, np.float32),
        ["a", "b"],
        np.array([[1.0, 2.0], [300.0, 400.0]], dtype=np.float32),
        settings=RoundSettings(),
        reputation=ReputationBook(),
        aggregator=build("mean"),
        detector=detector,
    )
    assert result.scores is None
    assert result.flags == ()
    assert len(detector) == 0


def test_scoring_off_leaves_the_detector_untouched() -> None:
    detector = AnomalyDetector()
    server_step(
        np.zeros(4, np.float32),
        IDS,
        _updates(),
        settings=RoundSettings(anomaly_detection=False),
        reputation=ReputationBook(),
        aggregator=build("mean"),
        detector=detector,
    )
    assert detector.rounds == 0
