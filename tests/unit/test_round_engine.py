"""The shared server side of a round: cohorts, sorted outcomes, the server step."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pytest
from numpy.typing import ArrayLike

from byzedge.coordinator.aggregation import AggregationResult, build
from byzedge.coordinator.anomaly import REASON_NORM, REASON_PERSISTENT, AnomalyDetector, AnomalyFlag
from byzedge.coordinator.devices import DeviceRegistry
from byzedge.coordinator.ingest import Ingest, RoundWindow
from byzedge.coordinator.reputation import ReputationBook
from byzedge.coordinator.round_engine import (
    Intake,
    RoundSettings,
    aggregate_with_fallback,
    cohort_size,
    sample_cohort,
    server_step,
    with_automatic_radius,
)
from byzedge.edge_agent.pipeline import UpdatePipeline
from byzedge.edge_agent.seams import RoundContext
from byzedge.protocol import topics
from byzedge.protocol.signing import SigningKey


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


# -- cohorts ------------------------------------------------------------------------------

FLEET = [f"dev-{i:03d}" for i in range(10)]


def test_cohort_is_the_seeded_draw_over_the_sorted_ids() -> None:
    """The cohort is default_rng([seed, round]).choice(sorted ids), whatever the id order."""
    # Execute
    cohort = sample_cohort(reversed(FLEET), 3, 5, devices_per_round=4)
    # Assert
    rng = np.random.default_rng([5, 3])
    assert cohort == frozenset(rng.choice(FLEET, size=4, replace=False).tolist())
    assert cohort == sample_cohort(FLEET, 3, 5, devices_per_round=4)
    assert cohort != sample_cohort(FLEET, 4, 5, devices_per_round=4)


@pytest.mark.parametrize(
    ("devices_per_round", "participation_rate", "size"),
    [
        (None, None, None),
        (4, None, 4),
        (4, 0.9, 4),  # devices_per_round wins
        (None, 0.3, 3),
        (None, 0.01, 1),  # at least one device
        (10, None, None),  # everyone
        (None, 0.96, None),  # rounds to everyone
    ],
)
def test_cohort_size_follows_the_configuration(
    devices_per_round: int | None, participation_rate: float | None, size: int | None
) -> None:
    """devices_per_round wins over the rate; a size reaching the fleet means everyone."""
    assert cohort_size(10, devices_per_round, participation_rate) == size
    cohort = sample_cohort(FLEET, 1, 0, devices_per_round, participation_rate)
    assert (cohort is None) == (size is None)
    assert cohort is None or len(cohort) == size


@pytest.mark.parametrize(
    ("devices_per_round", "participation_rate", "params", "radius"),
    [
        (None, None, {}, "median"),
        (4, None, {}, "model-step"),
        (None, 0.5, {}, "model-step"),
        (None, 1.0, {}, "median"),
        (4, None, {"radius": "median"}, "median"),
    ],
)
def test_clipping_vr_radius_follows_the_participation(
    devices_per_round: int | None,
    participation_rate: float | None,
    params: dict[str, Any],
    radius: str,
) -> None:
    """An unset clipping-vr radius is model-step exactly when rounds sample cohorts."""
    chosen = with_automatic_radius(
        "clipping-vr",
        params,
        devices_per_round=devices_per_round,
        participation_rate=participation_rate,
    )
    assert chosen["radius"] == radius


def test_other_rules_keep_their_parameters() -> None:
    """Only clipping-vr gets an automatic radius."""
    params = {"trim_fraction": 0.1}
    chosen = with_automatic_radius(
        "trimmed-mean", params, devices_per_round=4, participation_rate=None
    )
    assert chosen == params


# -- ingest outcomes ----------------------------------------------------------------------


def _message(
    pipeline: UpdatePipeline, key: SigningKey, device: str, update: np.ndarray, counter: int
) -> tuple[str, bytes]:
    context = RoundContext(
        device_id=device,
        round=1,
        global_params=np.zeros(4, np.float32),
        rng=np.random.default_rng(0),
    )
    prepared = pipeline.prepare(
        update, context, key=key, fleet="f", base_version=0, counter=counter
    )
    return topics.update_topic("f", device), prepared.wire_bytes


def test_intake_sorts_every_kind_of_outcome() -> None:
    """Accepted, redelivered, attributable and unattributable rejections land apart."""
    # Prepare
    keys = {d: SigningKey.generate() for d in ("a", "b", "c")}
    ingest = Ingest(
        "f",
        DeviceRegistry({d: k.verify_key for d, k in keys.items()}),
        max_message_bytes=1 << 20,
        max_update_bytes=1 << 20,
    )
    window = RoundWindow(1, 0, 4)
    pipeline = UpdatePipeline("dense")
    good = _message(pipeline, keys["a"], "a", np.ones(4, np.float32), 1)
    nan = _message(pipeline, keys["b"], "b", np.full(4, np.nan, np.float32), 1)
    forged = _message(pipeline, SigningKey.generate(), "c", np.ones(4, np.float32), 1)
    intake = Intake()
    # Execute
    for topic, frame in (good, good, nan, forged):
        intake.take(ingest.submit(topic, frame, window))
    intake.take(None)  # an incomplete chunked update
    # Assert
    assert intake.device_ids == ["a"]
    np.testing.assert_array_equal(intake.rows()[0], np.ones(4))
    assert intake.redelivered == 1
    assert intake.rejected == {"non-finite": 1, "bad-signature": 1}
    assert intake.misbehaving == {"b"}  # only the key holder can send a signed NaN
    assert intake.last_rejections == {"b": "non-finite", "c": "bad-signature"}


# -- the streaming path -------------------------------------------------------------------


def _rows(n: int = 5, d: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.normal(size=d).astype(np.float32) for _ in range(n)]


def test_without_scoring_a_streaming_rule_streams_the_rows() -> None:
    """Anomaly scoring off: mean takes the rows one at a time, with the batch result."""
    rows = _rows()
    ids = [f"d{i}" for i in range(len(rows))]
    streamed = server_step(
        np.zeros(3, np.float32),
        ids,
        rows,
        settings=RoundSettings(anomaly_detection=False),
        reputation=ReputationBook(),
        aggregator=build("mean"),
    )
    assert streamed.streamed
    assert streamed.weights is not None
    np.testing.assert_allclose(streamed.params, np.mean(rows, axis=0), rtol=1e-6, atol=1e-7)


def test_with_scoring_every_rule_runs_in_batch() -> None:
    """Scoring needs the (n, d) matrix, so a streaming rule runs in batch."""
    result = server_step(
        np.zeros(3, np.float32),
        [f"d{i}" for i in range(5)],
        _rows(),
        settings=RoundSettings(),
        reputation=ReputationBook(),
        aggregator=build("mean"),
    )
    assert not result.streamed
    assert result.scores is not None


def test_a_rule_that_cannot_stream_this_round_runs_it_in_batch() -> None:
    """clipping-vr's median radius is unknown before its first round: batch, then stream."""
    rule = build("clipping-vr")
    book = ReputationBook()
    ids = [f"d{i}" for i in range(5)]
    settings = RoundSettings(anomaly_detection=False)
    first = server_step(
        np.zeros(3, np.float32), ids, _rows(), settings=settings, reputation=book, aggregator=rule
    )
    second = server_step(
        first.params, ids, _rows(), settings=settings, reputation=book, aggregator=rule
    )
    assert (first.streamed, second.streamed) == (False, True)
    assert first.clip_threshold is not None
    assert second.clip_threshold is not None
    assert book.weight("d0") == 1.0


def test_clip_threshold_is_none_for_rules_without_one() -> None:
    """Only rules that report a radius fill the summary's clip_threshold."""
    result = server_step(
        np.zeros(3, np.float32),
        [f"d{i}" for i in range(5)],
        _rows(),
        settings=RoundSettings(),
        reputation=ReputationBook(),
        aggregator=build("coordinate-median"),
    )
    assert result.clip_threshold is None


def test_a_skipped_round_reports_no_clip_threshold() -> None:
    """No aggregation, no radius."""
    result = server_step(
        np.zeros(3, np.float32),
        [],
        None,
        settings=RoundSettings(),
        reputation=ReputationBook(),
        aggregator=build("clipping-vr"),
    )
    assert result.skipped
    assert result.clip_threshold is None


# -- what rules declare -------------------------------------------------------------------


class _Recorder:
    """A test rule that records what the round engine passes it (the mean otherwise)."""

    name: ClassVar[str] = "recorder"
    stateful: ClassVar[bool] = False
    streaming: ClassVar[bool] = False
    needs_device_ids: ClassVar[bool] = True

    def __init__(self) -> None:
        self.seen: list[tuple[str, ...] | None] = []

    def __call__(
        self,
        updates: np.ndarray,
        weights: ArrayLike | None = None,
        *,
        device_ids: Sequence[str] | None = None,
    ) -> AggregationResult:
        self.seen.append(None if device_ids is None else tuple(device_ids))
        return AggregationResult(np.mean(updates, axis=0).astype(np.float32))


def test_a_rule_that_declares_it_gets_the_rows_device_ids() -> None:
    """needs_device_ids, not the rule's class, makes the step pass the ids."""
    rule = _Recorder()
    server_step(
        np.zeros(4, np.float32),
        IDS,
        _updates(),
        settings=RoundSettings(),
        reputation=ReputationBook(),
        aggregator=rule,
    )
    assert rule.seen == [tuple(IDS)]


def test_a_probe_without_ids_gets_none_and_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """A colluding attack's probe passes no ids, and a breakdown on it is not logged."""
    rule = _Recorder()
    updates = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    aggregate, used = aggregate_with_fallback(rule, updates)
    assert rule.seen == [None]
    assert used is None
    np.testing.assert_allclose(aggregate, [2.0, 3.0])
    with caplog.at_level(logging.WARNING, logger="byzedge.coordinator.round_engine"):
        _, used = aggregate_with_fallback(
            build("krum", max_byzantine_fraction=0.2), updates, log=False
        )
    assert used == "coordinate-median"
    assert caplog.records == []
