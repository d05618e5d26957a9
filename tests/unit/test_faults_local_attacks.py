"""Device-local attacks added for issue 4: boost, backdoor, zero, stale replay, random."""

from __future__ import annotations

import numpy as np
import pytest

from byzedge.edge_agent.seams import LocalData, RoundContext
from byzedge.faults import (
    Backdoor,
    FaultConfigError,
    FaultInjector,
    ModelReplacement,
    RandomUpdate,
    ScaledUpdate,
    SignFlip,
    StaleReplay,
    ZeroUpdate,
    apply_trigger,
)


class DigitsLikeSource:
    def __init__(self, rows: int = 100) -> None:
        rng = np.random.default_rng(0)
        self.features = rng.random((rows, 64), dtype=np.float32) * 0.5
        self.labels = (np.arange(rows, dtype=np.int64) % 9) + 1  # never class 0

    def read(self, round_number: int) -> LocalData:
        return LocalData(features=self.features, labels=self.labels)


def context(round_number: int = 0, seed: int = 0) -> RoundContext:
    return RoundContext("dev-1", round_number, np.zeros(4, np.float32), np.random.default_rng(seed))


def test_model_replacement_boosts_by_participants_over_server_lr() -> None:
    stage = ModelReplacement(num_participants=10, server_learning_rate=0.5)
    out = stage(np.array([1.0, -2.0], np.float32), context())
    np.testing.assert_allclose(out, [20.0, -40.0])


def test_scaled_update_factor_overrides_n_over_eta() -> None:
    stage = ScaledUpdate(num_participants=10, factor=3.0)
    np.testing.assert_allclose(stage(np.ones(2, np.float32), context()), 3.0)


def test_scaled_update_refuses_zero_participants() -> None:
    with pytest.raises(FaultConfigError, match="num_participants"):
        ScaledUpdate(num_participants=0)


def test_trigger_sets_the_bottom_right_two_by_two_block_only() -> None:
    features = np.zeros((3, 64), np.float32)
    stamped = apply_trigger(features).reshape(3, 8, 8)
    assert np.all(stamped[:, 6:, 6:] == 1.0)
    assert stamped.sum() == 3 * 4
    assert features.sum() == 0.0  # input untouched


def test_backdoor_poisons_the_given_share_with_trigger_and_target_label() -> None:
    source = DigitsLikeSource()
    data = Backdoor(source, target_class=0, poison_fraction=0.3, seed=1).read(0)
    poisoned = data.labels == 0
    assert poisoned.sum() == 30
    images = data.features.reshape(-1, 8, 8)
    assert np.all(images[poisoned][:, 6:, 6:] == 1.0)
    np.testing.assert_array_equal(data.features[~poisoned], source.features[~poisoned])
    np.testing.assert_array_equal(data.labels[~poisoned], source.labels[~poisoned])


def test_backdoor_boost_is_an_update_stage_of_the_injector() -> None:
    injector = FaultInjector([{"name": "backdoor", "params": {"boost": 5.0}}])
    (stage,) = injector.update_stages()
    np.testing.assert_allclose(stage(np.ones(3, np.float32), context()), 5.0)


def test_unboosted_backdoor_adds_no_update_stage() -> None:
    assert FaultInjector([{"name": "backdoor"}]).update_stages() == []


def test_zero_update_sends_zeros() -> None:
    out = ZeroUpdate()(np.arange(5, dtype=np.float32), context())
    np.testing.assert_array_equal(out, np.zeros(5, np.float32))


def test_stale_replay_first_keeps_sending_the_first_update() -> None:
    stage = StaleReplay(mode="first")
    first = np.full(3, 1.0, np.float32)
    assert stage(first, context(0)) is first  # nothing recorded yet: honest
    for k in range(1, 4):
        np.testing.assert_array_equal(stage(np.full(3, float(k + 1), np.float32), context(k)), 1.0)


def test_stale_replay_previous_sends_last_rounds_update() -> None:
    stage = StaleReplay(mode="previous")
    stage(np.full(2, 1.0, np.float32), context(0))
    np.testing.assert_array_equal(stage(np.full(2, 2.0, np.float32), context(1)), 1.0)
    np.testing.assert_array_equal(stage(np.full(2, 3.0, np.float32), context(2)), 2.0)


def test_stale_replay_records_before_its_start_round() -> None:
    stage = StaleReplay(start_round=2)
    np.testing.assert_array_equal(stage(np.full(2, 7.0, np.float32), context(0)), 7.0)
    np.testing.assert_array_equal(stage(np.full(2, 8.0, np.float32), context(1)), 8.0)
    np.testing.assert_array_equal(stage(np.full(2, 9.0, np.float32), context(2)), 7.0)


def test_stale_replay_state_round_trips() -> None:
    stage = StaleReplay()
    stage(np.full(2, 4.0, np.float32), context(0))
    restored = StaleReplay()
    restored.load_state_dict(stage.state_dict())
    np.testing.assert_array_equal(restored(np.zeros(2, np.float32), context(1)), 4.0)


def test_random_update_has_the_honest_norm_and_another_direction() -> None:
    update = np.random.default_rng(3).normal(size=100).astype(np.float32)
    out = RandomUpdate()(update, context())
    assert np.linalg.norm(out) == pytest.approx(np.linalg.norm(update), rel=1e-5)
    cosine = float(out @ update) / float(np.linalg.norm(out) * np.linalg.norm(update))
    assert abs(cosine) < 0.5


def test_intermittent_update_attack_acts_in_about_probability_of_rounds() -> None:
    stage = SignFlip(factor=1.0, probability=0.5, seed=4)
    update = np.ones(2, np.float32)
    flipped = [stage(update, context(k))[0] < 0 for k in range(400)]
    assert 0.42 < np.mean(flipped) < 0.58


def test_attack_coin_is_the_same_on_a_restart() -> None:
    first = SignFlip(probability=0.5, seed=11)
    second = SignFlip(probability=0.5, seed=11)
    assert [first.is_active(k) for k in range(50)] == [second.is_active(k) for k in range(50)]


def test_bad_probability_is_named() -> None:
    with pytest.raises(FaultConfigError, match="probability"):
        ZeroUpdate(probability=1.5)
