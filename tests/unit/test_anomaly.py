"""Calibrated anomaly scoring: the fleet, each device's history, reasons and state."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

from byzedge.coordinator.anomaly import (
    MIN_UPDATES,
    REASON_DIRECTION,
    REASON_NORM,
    REASON_PERSISTENT,
    REASONS,
    SCALE_FLOOR,
    AnomalyDetector,
    AnomalyScores,
    clipped_mean,
    lower_scale,
    mad_scale,
    robust_scale,
    score_updates,
    single_round_limit,
    update_features,
)
from byzedge.coordinator.state import CoordinatorState

IDS = [f"pi-{i:02d}" for i in range(10)]


def honest_round(rng: np.random.Generator, n: int = 10, d: int = 40) -> np.ndarray:
    """Updates sharing a direction, with a little noise: norms within a few percent."""
    return (np.ones(d) + 0.3 * rng.standard_normal((n, d))).astype(np.float32)


def run(
    detector: AnomalyDetector, rounds: int, seed: int = 0, **rows: float
) -> list[AnomalyScores]:
    """Score ``rounds`` honest rounds; ``pi_03=2.0`` scales device pi-03's update by 2."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(rounds):
        updates = honest_round(rng)
        for name, factor in rows.items():
            updates[IDS.index(name.replace("_", "-"))] *= factor
        scores = detector.score(IDS, updates)
        assert scores is not None
        out.append(scores)
    return out


def flagged(scores: AnomalyScores, device: str) -> bool:
    return bool(scores.flagged[scores.device_ids.index(device)])


# -- robust statistics ---------------------------------------------------------------------------


def test_mad_scale_is_the_corrected_median_absolute_deviation() -> None:
    # median 3, MAD = median(|2, 1, 0, 1, 97|) = 1, finite-sample factor 1.216 for n = 5
    assert mad_scale(np.array([1.0, 2.0, 3.0, 4.0, 100.0])) == pytest.approx(1.216 * 1.4826)


@pytest.mark.parametrize("n", [3, 5, 8, 20])
def test_mad_scale_and_robust_scale_are_unbiased_for_normal_samples(n: int) -> None:
    rng = np.random.default_rng(n)
    samples = 2.0 * rng.standard_normal((40_000, n))
    assert np.mean([mad_scale(row) for row in samples]) == pytest.approx(2.0, rel=0.02)
    assert np.mean([robust_scale(row) for row in samples]) == pytest.approx(2.0, rel=0.02)


def test_robust_scale_ignores_values_far_outside() -> None:
    rng = np.random.default_rng(1)
    values = rng.standard_normal(50)
    spoiled = values.copy()
    spoiled[:10] = 1e6
    assert robust_scale(spoiled) < 1.5
    assert robust_scale(values) == pytest.approx(1.0, abs=0.3)


def test_robust_scale_is_zero_when_most_values_are_equal() -> None:
    assert robust_scale(np.array([2.0, 2.0, 2.0, 2.0, 7.0])) == 0.0


def test_lower_scale_mirrors_the_values_below_the_median() -> None:
    values = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    assert lower_scale(values) == robust_scale(np.array([-2.0, -1.0, 1.0, 2.0]))


def test_lower_scale_is_zero_without_two_values_below_the_median() -> None:
    assert lower_scale(np.array([1.0, 1.0, 1.0, 5.0])) == 0.0


@settings(max_examples=60, deadline=None)
@given(
    half=st.integers(2, 20),
    seed=st.integers(0, 2**32 - 1),
    push=st.floats(1.0, 1e6, allow_nan=False, allow_infinity=False),
)
def test_lower_scale_ignores_how_far_up_the_upper_values_go(
    half: int, seed: int, push: float
) -> None:
    # odd sizes: the median is a value, so pushing the ones above it does not move it
    values = np.random.default_rng(seed).standard_normal(2 * half + 1)
    above = values > np.median(values)
    pushed = values.copy()
    pushed[above] += push
    assert lower_scale(pushed) == pytest.approx(lower_scale(values), rel=1e-12, abs=1e-12)


def test_clipped_mean_bounds_the_pull_of_a_huge_update() -> None:
    updates = np.ones((5, 3), dtype=np.float32)
    updates[0] = [-1e6, 0.0, 0.0]
    norms = np.linalg.norm(updates.astype(np.float64), axis=1)
    centre = clipped_mean(updates, norms)
    # the huge row counts as one update of the median norm sqrt(3)
    assert_allclose(centre, [(4 - math.sqrt(3)) / 5, 0.8, 0.8], rtol=1e-5)


def test_features_are_log_norm_and_cosine_distance_to_the_clipped_mean() -> None:
    updates = np.array([[3.0, 4.0], [3.0, 4.0], [3.0, 4.0], [-3.0, -4.0]], dtype=np.float32)
    features = update_features(updates)
    assert_allclose(features[0], np.log(5.0))
    assert_allclose(features[1], [0.0, 0.0, 0.0, 2.0], atol=1e-6)


def test_a_zero_update_has_a_neutral_direction() -> None:
    updates = np.array([[1.0, 0.0], [1.0, 0.1], [1.0, -0.1], [0.0, 0.0]], dtype=np.float32)
    features = update_features(updates)
    assert features[1, 3] == pytest.approx(np.median(features[1, :3]))
    assert np.isfinite(features).all()


def test_single_round_limit_is_the_ewma_limit_for_one_round() -> None:
    assert single_round_limit(3.0) == pytest.approx(3.0 / math.sqrt(0.25 * 1.75))


# -- hand-made cases with obvious answers ---------------------------------------------------------


def test_a_five_times_larger_update_is_flagged_for_its_norm() -> None:
    updates = honest_round(np.random.default_rng(2))
    updates[4] *= 5
    scores = score_updates(updates)
    assert scores is not None
    assert scores.flagged_indices == (4,)
    assert scores.reasons[4] == REASON_NORM
    assert scores.score[4] > 3.0


def test_a_sign_flipped_update_is_flagged_for_its_direction() -> None:
    updates = honest_round(np.random.default_rng(3))
    updates[7] = -updates[7]
    scores = score_updates(updates)
    assert scores is not None
    assert scores.flagged_indices == (7,)
    assert scores.reasons[7] == REASON_DIRECTION
    assert abs(scores.norm_z[7]) < 3


def test_identical_updates_flag_nobody() -> None:
    updates = np.tile(np.array([0.1, -3.0, 2.5], dtype=np.float32), (8, 1))
    scores = score_updates(updates)
    assert scores is not None
    assert not scores.flagged.any()
    assert_allclose(scores.score, 0.0)


def test_all_zero_updates_flag_nobody() -> None:
    scores = score_updates(np.zeros((5, 4), dtype=np.float32))
    assert scores is not None
    assert not scores.flagged.any()


def test_a_small_update_is_not_flagged() -> None:
    updates = honest_round(np.random.default_rng(4))
    updates[2] *= 0.01
    scores = score_updates(updates)
    assert scores is not None
    assert scores.norm_z[2] < -3
    assert not scores.flagged[2]


@pytest.mark.parametrize("n", [1, 2])
def test_fewer_than_three_updates_are_not_scored(n: int) -> None:
    detector = AnomalyDetector()
    updates = np.ones((n, 4), dtype=np.float32)
    updates[0] = 1e6
    assert detector.score(IDS[:n], updates) is None
    assert len(detector) == 0
    assert detector.rounds == 0


def test_a_one_round_moderate_blip_is_not_flagged() -> None:
    detector = AnomalyDetector()
    run(detector, 30)
    # twice the usual norm: about 3.5 scale units, a "3 sigma" outlier for a naive test
    (blip,) = run(detector, 1, seed=99, pi_05=2.0)
    assert 3.0 < blip.norm_z[5] < single_round_limit(3.0)
    assert not blip.flagged.any()


def test_a_one_round_huge_blip_is_flagged_once_then_cleared() -> None:
    detector = AnomalyDetector()
    run(detector, 30)
    (blip,) = run(detector, 1, seed=98, pi_05=10.0)
    after = run(detector, 5, seed=97)
    assert blip.flagged_ids == ("pi-05",)
    assert blip.reasons[5] == REASON_NORM
    assert not any(s.flagged.any() for s in after)


def test_a_device_moderately_off_from_its_first_round_is_not_flagged() -> None:
    # Documented rule: a moderate offset that no single round pushes past the limit is
    # learned as the device's baseline (non-IID devices have such offsets).
    history = run(AnomalyDetector(), 40, pi_03=2.0)
    assert not any(flagged(s, "pi-03") for s in history)


def test_a_flagged_device_that_stays_moderately_off_stays_flagged_as_persistent() -> None:
    detector = AnomalyDetector()
    (first,) = run(detector, 1, pi_03=6.0)
    later = run(detector, 30, seed=1, pi_03=2.0)
    assert first.flagged_ids == ("pi-03",)
    assert all(s.flagged_ids == ("pi-03",) for s in later)
    assert {s.reasons[3] for s in later} == {REASON_PERSISTENT}


def test_an_attacker_boosting_from_its_first_round_is_flagged_every_round() -> None:
    history = run(AnomalyDetector(), 60, pi_08=5.0)
    assert all(s.flagged_ids == ("pi-08",) for s in history)


def test_a_device_that_jumps_after_a_clean_record_stays_flagged() -> None:
    detector = AnomalyDetector()
    run(detector, 60)
    later = run(detector, 60, seed=5, pi_01=5.0)
    assert all(s.flagged_ids == ("pi-01",) for s in later)


def test_a_device_with_recurring_one_off_outliers_learns_its_wider_spread() -> None:
    detector = AnomalyDetector()
    rng = np.random.default_rng(10)
    spikes = []
    for t in range(150):
        updates = honest_round(rng)
        if t % 6 == 5:
            updates[4] *= 3.0  # a hard batch now and then: 5.5 scale units at first
        scores = detector.score(IDS, updates)
        assert scores is not None
        if t % 6 == 5:
            spikes.append(flagged(scores, "pi-04"))
    assert spikes[0]
    assert not any(spikes[-10:])


def test_honest_gaussian_fleets_are_rarely_flagged() -> None:
    # 20 devices with persistent norm offsets (non-IID) and shrinking updates over time.
    rng = np.random.default_rng(6)
    ids = [f"d{i}" for i in range(20)]
    offsets = np.exp(0.3 * rng.standard_normal(20))[:, None]
    detector = AnomalyDetector()
    flags = np.zeros(20)
    for t in range(200):
        signal = np.ones(30) / (1 + t / 50)
        updates = offsets * (signal + 0.5 * signal * rng.standard_normal((20, 30)))
        scores = detector.score(ids, updates.astype(np.float32))
        assert scores is not None
        flags += scores.flagged
    assert flags.sum() / (200 * 20) < 0.01
    assert flags.max() / 200 <= 0.05


def test_threshold_controls_what_is_flagged() -> None:
    updates = honest_round(np.random.default_rng(7))
    updates[0] *= 5
    scores = score_updates(updates)
    assert scores is not None
    higher = score_updates(updates, threshold=float(scores.score[0]) + 0.1)
    assert higher is not None
    assert higher.flagged_indices == ()


def test_every_flag_carries_a_score_above_the_threshold_and_a_known_reason() -> None:
    rng = np.random.default_rng(8)
    updates = honest_round(rng)
    updates[1] *= 8
    updates[2] = -updates[2]
    scores = score_updates(updates, device_ids=IDS)
    assert scores is not None
    assert [f.device_id for f in scores.flags] == ["pi-01", "pi-02"]
    for flag in scores.flags:
        assert flag.score > scores.threshold
        assert flag.reason in REASONS
    assert all(r is None for i, r in enumerate(scores.reasons) if not scores.flagged[i])


def test_scores_have_one_entry_per_update() -> None:
    scores = score_updates(np.random.default_rng(9).normal(size=(7, 5)))
    assert scores is not None
    for array in (scores.norm_z, scores.direction_z, scores.combined_z, scores.score):
        assert array.shape == (7,)
    assert scores.flagged.shape == (7,)
    assert scores.flagged.dtype == np.bool_
    assert len(scores.reasons) == 7


def test_the_scale_never_drops_below_the_floor() -> None:
    # Norms that differ by 1% only: a 10% larger update is 0.1 / 0.2 units away, not 10.
    updates = np.ones((6, 4), dtype=np.float32) * np.linspace(1.0, 1.01, 6)[:, None]
    updates[0] *= 1.1
    scores = score_updates(updates)
    assert scores is not None
    assert scores.norm_z[0] == pytest.approx(math.log(1.1 / 1.006) / SCALE_FLOOR[0], rel=0.05)


# -- properties -----------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(n=st.integers(MIN_UPDATES, 12), d=st.integers(2, 20), seed=st.integers(0, 2**32 - 1))
def test_scores_follow_a_permutation_of_the_updates(n: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    updates = rng.standard_normal((n, d)).astype(np.float32)
    updates[0] *= 10
    ids = [f"d{i}" for i in range(n)]
    order = rng.permutation(n)
    plain = AnomalyDetector().score(ids, updates)
    permuted = AnomalyDetector().score([ids[i] for i in order], updates[order])
    assert plain is not None
    assert permuted is not None
    # equal up to float32 rounding (the centre is a float32 sum in another order)
    assert_allclose(permuted.score, plain.score[order], rtol=1e-5, atol=1e-6)
    clear = np.abs(plain.score[order] - 3.0) > 1e-4
    assert (permuted.flagged[clear] == plain.flagged[order][clear]).all()


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(MIN_UPDATES, 10),
    exponent=st.integers(-12, 12),
    seed=st.integers(0, 2**32 - 1),
)
def test_scores_do_not_depend_on_the_scale_of_the_updates(n: int, exponent: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rounds = [rng.standard_normal((n, 6)).astype(np.float32) for _ in range(3)]
    ids = [f"d{i}" for i in range(n)]
    plain, scaled = AnomalyDetector(), AnomalyDetector()
    factor = np.float32(2.0**exponent)  # exact in float32
    for updates in rounds:
        a = plain.score(ids, updates)
        b = scaled.score(ids, updates * factor)
        assert a is not None
        assert b is not None
        assert_allclose(b.score, a.score, rtol=1e-6, atol=1e-8)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, MIN_UPDATES - 1), seed=st.integers(0, 2**32 - 1))
def test_no_flags_with_fewer_than_three_updates(n: int, seed: int) -> None:
    updates = np.random.default_rng(seed).standard_normal((n, 5)) * 1e6
    assert score_updates(updates) is None


# -- state ---------------------------------------------------------------------------------------


def test_state_round_trips_through_msgpack() -> None:
    detector = AnomalyDetector()
    run(detector, 12, pi_02=6.0)
    restored = AnomalyDetector()
    packed = msgpack.packb(detector.state_dict(), use_bin_type=True)
    restored.load_state_dict(msgpack.unpackb(packed, raw=False))
    assert restored.state_dict() == detector.state_dict()
    (a,) = run(detector, 1, seed=3, pi_02=2.0)
    (b,) = run(restored, 1, seed=3, pi_02=2.0)
    assert_allclose(a.score, b.score)
    assert a.reasons == b.reasons


def test_state_dict_holds_only_plain_values() -> None:
    detector = AnomalyDetector()
    run(detector, 3)

    def plain(value: Any) -> bool:
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return value is None or type(value) in {bool, int, float, str, bytes}

    state = detector.state_dict()
    assert plain(state)
    assert state["rounds"] == 3
    assert set(state["ids"]) == set(IDS)


def _valid_state() -> dict[str, Any]:
    detector = AnomalyDetector()
    run(detector, 2)
    return detector.state_dict()


def _as_version_1(state: dict[str, Any]) -> dict[str, Any]:
    """The same state in the layout of version 1 (a map per device), as older files hold."""
    n = len(state["ids"])
    values = np.frombuffer(state["values"], dtype="<f8").reshape(n, 10)
    flags = np.frombuffer(state["flags"], dtype=np.uint8).reshape(n, 2)
    devices = {
        device: {
            "level": values[i, 0:2].tolist(),
            "scale": values[i, 2:4].tolist(),
            "evidence": values[i, 4:7].tolist(),
            "trust": float(values[i, 7]),
            "suspect": bool(flags[i, 0]),
            "pending": values[i, 8:10].tolist(),
            "rebaseline": bool(flags[i, 1]),
        }
        for i, device in enumerate(state["ids"])
    }
    return {
        "version": 1,
        "rounds": state["rounds"],
        "pooled_scale": state["pooled_scale"],
        "devices": devices,
    }


def _column(state: dict[str, Any], row: int, column: int, value: float) -> dict[str, Any]:
    values = np.frombuffer(state["values"], dtype="<f8").reshape(-1, 10).copy()
    values[row, column] = value
    return {**state, "values": values.tobytes()}


def _with(path: Sequence[str], value: object, *, version: int = 2) -> dict[str, Any]:
    state = _valid_state() if version == 2 else _as_version_1(_valid_state())
    target: Any = state
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return state


@pytest.mark.parametrize(
    "state",
    [
        _with(["version"], 3),
        _with(["version"], True),
        _with(["rounds"], -1),
        _with(["rounds"], 1.5),
        _with(["pooled_scale"], [0.1]),
        _with(["pooled_scale"], [0.1, float("nan")]),
        _with(["ids"], "pi-00"),
        _with(["ids"], ["pi-00"] * len(IDS)),
        _with(["values"], b"\0" * 8),
        _with(["values"], [0.0] * 10 * len(IDS)),
        _with(["flags"], b"\2" * 2 * len(IDS)),
        _with(["flags"], KeyError),
        _column(_valid_state(), 0, 1, float("inf")),
        _column(_valid_state(), 0, 2, 0.0),
        _column(_valid_state(), 1, 7, 1.5),
        _column(_valid_state(), 2, 8, -1.0),
        _with(["extra"], 0),
        {"version": 2},
        # Version 1 (a map per device), which older state files hold.
        _with(["devices"], [], version=1),
        _with(["devices", "pi-00", "level"], [0.0, float("inf")], version=1),
        _with(["devices", "pi-00", "scale"], [0.0, 0.1], version=1),
        _with(["devices", "pi-00", "evidence"], [0.0, 0.0], version=1),
        _with(["devices", "pi-00", "trust"], 1.5, version=1),
        _with(["devices", "pi-00", "suspect"], 1, version=1),
        _with(["devices", "pi-00", "rebaseline"], KeyError, version=1),
        _with(["devices", "pi-00", "pending"], [-1.0, 0.0], version=1),
        _with(["devices", "pi-00", "extra"], 0, version=1),
        _with(["devices", "pi-00"], "not a mapping", version=1),
        _with(["ids"], [], version=1),
        {"version": 1},
    ],
)
def test_malformed_state_is_rejected_and_the_current_state_kept(state: dict[str, Any]) -> None:
    detector = AnomalyDetector()
    run(detector, 2)
    before = detector.state_dict()
    with pytest.raises(ValueError, match="anomaly state"):
        detector.load_state_dict(state)
    assert detector.state_dict() == before


def test_a_device_id_that_is_not_a_string_is_rejected() -> None:
    state = _valid_state()
    state["ids"][0] = 7
    old = _as_version_1(_valid_state())
    old["devices"][7] = old["devices"].pop("pi-00")
    for document in (state, old):
        with pytest.raises(ValueError, match="device ids"):
            AnomalyDetector().load_state_dict(document)


def test_a_version_1_state_loads_as_the_same_history() -> None:
    detector = AnomalyDetector()
    run(detector, 6, pi_02=6.0)
    detector.reset("pi-01")
    restored = AnomalyDetector()

    restored.load_state_dict(_as_version_1(detector.state_dict()))

    assert restored.state_dict() == detector.state_dict()
    (a,) = run(detector, 1, seed=5, pi_02=3.0)
    (b,) = run(restored, 1, seed=5, pi_02=3.0)
    assert_allclose(a.score, b.score)
    assert a.reasons == b.reasons


def test_a_forgotten_device_row_is_reused_and_starts_afresh() -> None:
    detector = AnomalyDetector()
    run(detector, 3)
    detector.forget("pi-00")
    fresh = AnomalyDetector()  # keeps pi-00: its new device gets a row never used
    run(fresh, 3)
    cohort = ["new-device", *IDS[1:]]
    updates = np.random.default_rng(4).standard_normal((len(IDS), 4)).astype(np.float32)

    reused = detector.score(cohort, updates)
    appended = fresh.score(cohort, updates)

    assert len(detector) == len(IDS)
    assert reused is not None
    assert appended is not None
    assert_allclose(reused.score, appended.score)
    assert detector.state_dict()["ids"][0] == "new-device"  # pi-00's row


def test_forget_drops_a_device() -> None:
    detector = AnomalyDetector()
    run(detector, 2)
    detector.forget("pi-00")
    detector.forget("never-seen")
    assert "pi-00" not in detector
    assert len(detector) == len(IDS) - 1


def test_reset_makes_the_next_update_the_devices_baseline() -> None:
    detector = AnomalyDetector()
    run(detector, 1, pi_03=6.0)
    stuck = run(detector, 5, seed=1, pi_03=2.0)
    detector.reset("pi-03")
    detector.reset("never-seen")
    after = run(detector, 20, seed=2, pi_03=2.0)
    assert all(flagged(s, "pi-03") for s in stuck)
    assert not any(flagged(s, "pi-03") for s in after)


# -- arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0.0, -1.0, float("nan"), float("inf")])
def test_a_threshold_that_is_not_positive_and_finite_is_rejected(threshold: float) -> None:
    with pytest.raises(ValueError, match="threshold"):
        AnomalyDetector(threshold)
    with pytest.raises(ValueError, match="threshold"):
        AnomalyDetector().score(IDS[:3], np.ones((3, 2)), threshold=threshold)


def test_duplicate_device_ids_are_rejected() -> None:
    with pytest.raises(ValueError, match="distinct"):
        AnomalyDetector().score(["a", "a", "b"], np.ones((3, 2)))


def test_ids_and_rows_must_match() -> None:
    with pytest.raises(ValueError, match="device ids"):
        AnomalyDetector().score(["a", "b"], np.ones((3, 2)))


def test_non_finite_updates_are_rejected() -> None:
    updates = np.zeros((4, 3), dtype=np.float32)
    updates[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        AnomalyDetector().score(IDS[:4], updates)


def test_coordinator_state_round_trips_the_detector_state() -> None:
    detector = AnomalyDetector()
    run(detector, 4, pi_02=6.0)
    state = CoordinatorState(
        fleet="f",
        model="mlp",
        completed_round=4,
        model_version=4,
        params=np.zeros(3, np.float32),
        anomaly=detector.state_dict(),
    )
    document = msgpack.unpackb(msgpack.packb(state.to_document(), use_bin_type=True), raw=False)
    restored = AnomalyDetector()
    restored.load_state_dict(CoordinatorState.from_document(document).anomaly)
    assert restored.state_dict() == detector.state_dict()


def test_a_state_document_without_a_detector_state_loads_with_an_empty_one() -> None:
    document = CoordinatorState(
        fleet="f", model="mlp", completed_round=1, model_version=1, params=np.zeros(2, np.float32)
    ).to_document()
    del document["anomaly"]
    assert CoordinatorState.from_document(document).anomaly == {}
