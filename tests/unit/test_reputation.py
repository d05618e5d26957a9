from __future__ import annotations

import json

import numpy as np
import pytest
from numpy.testing import assert_allclose

from byzedge.coordinator.reputation import ReputationBook


def test_unknown_device_has_the_initial_reputation() -> None:
    assert ReputationBook(initial=0.7).weight("pi-01") == 0.7
    assert "pi-01" not in ReputationBook()


def test_always_flagged_device_decays_geometrically() -> None:
    book = ReputationBook(decay=0.95)
    for _ in range(20):
        book.record("pi-01", good=False)
    assert book.weight("pi-01") == pytest.approx(0.95**20)


def test_good_device_keeps_full_reputation() -> None:
    book = ReputationBook()
    for _ in range(5):
        book.record("pi-01", good=True)
    assert book.weight("pi-01") == pytest.approx(1.0)


def test_device_recovers_slowly_after_behaving_again() -> None:
    book = ReputationBook(decay=0.95)
    for _ in range(30):
        book.record("pi-01", good=False)
    low = book.weight("pi-01")
    assert book.record("pi-01", good=True) == pytest.approx(0.95 * low + 0.05)
    for _ in range(9):
        book.record("pi-01", good=True)
    # After ten good rounds: 1 - 0.95**10 * (1 - low) ~ 0.53, still far from trusted.
    assert book.weight("pi-01") == pytest.approx(1 - 0.95**10 * (1 - low))
    assert book.weight("pi-01") < 0.6


def test_record_returns_the_new_reputation() -> None:
    assert ReputationBook(decay=0.9).record("pi-01", good=False) == pytest.approx(0.9)


def test_record_many_records_each_device() -> None:
    book = ReputationBook(decay=0.5)
    book.record_many({"a": True, "b": False})
    assert book.snapshot() == {"a": 1.0, "b": 0.5}


def test_weights_follow_the_order_of_the_ids() -> None:
    book = ReputationBook(decay=0.5)
    book.record("b", good=False)
    weights = book.weights(["a", "b", "c"])
    assert weights.dtype == np.float64
    assert_allclose(weights, [1.0, 0.5, 1.0])


def test_snapshot_is_a_copy() -> None:
    book = ReputationBook()
    book.record("a", good=False)
    snapshot = book.snapshot()
    snapshot["a"] = 0.0
    assert book.weight("a") == pytest.approx(0.95)


def test_forget_drops_a_device() -> None:
    book = ReputationBook()
    book.record("a", good=False)
    book.forget("a")
    book.forget("never-seen")
    assert len(book) == 0
    assert book.weight("a") == 1.0


def test_state_round_trips_through_json() -> None:
    book = ReputationBook(decay=0.9)
    book.record_many({"a": False, "b": True, "c": False})
    book.record("a", good=False)
    restored = ReputationBook(decay=0.9)
    restored.load_state_dict(json.loads(json.dumps(book.state_dict())))
    assert restored.snapshot() == book.snapshot()
    assert restored.record("a", good=True) == book.record("a", good=True)


@pytest.mark.parametrize("state", [{"a": 1.5}, {"a": -0.1}, {"a": "high"}, {1: 0.5}])
def test_invalid_state_is_rejected_and_the_current_state_kept(state: dict[object, object]) -> None:
    book = ReputationBook()
    book.record("x", good=False)
    with pytest.raises(ValueError, match="reputation"):
        book.load_state_dict(state)  # type: ignore[arg-type]
    assert book.snapshot() == {"x": pytest.approx(0.95)}


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, 1.5, float("nan"), "0.9"])
def test_decay_outside_the_open_unit_interval_is_rejected(decay: object) -> None:
    with pytest.raises(ValueError, match="decay"):
        ReputationBook(decay=decay)  # type: ignore[arg-type]


@pytest.mark.parametrize("initial", [-0.1, 1.1, float("nan")])
def test_initial_outside_the_unit_interval_is_rejected(initial: float) -> None:
    with pytest.raises(ValueError, match="initial"):
        ReputationBook(initial=initial)


def test_reset_puts_a_device_back_to_the_initial_reputation() -> None:
    book = ReputationBook(decay=0.5, initial=0.8)
    for _ in range(5):
        book.record("pi-01", good=False)
    assert book.reset("pi-01") == 0.8
    assert book.weight("pi-01") == 0.8
    assert "pi-01" in book
    assert book.record("pi-01", good=False) == pytest.approx(0.4)


def test_reset_of_an_unknown_device_records_the_initial_reputation() -> None:
    book = ReputationBook(initial=0.9)
    book.reset("new")
    assert book.snapshot() == {"new": 0.9}
