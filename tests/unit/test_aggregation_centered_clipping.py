from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

from byzedge.coordinator.aggregation.centered_clipping import CenteredClipping
from byzedge.coordinator.aggregation.clipping_vr import ClippingVR


def test_each_iteration_takes_one_clipped_step_from_the_centre() -> None:
    updates = np.array([[3.0, 4.0]], dtype=np.float32)
    assert_allclose(CenteredClipping(1.0, iterations=1)(updates).aggregate, [0.6, 0.8], rtol=1e-6)
    assert_allclose(CenteredClipping(1.0, iterations=3)(updates).aggregate, [1.8, 2.4], rtol=1e-6)


def test_the_output_is_the_next_rounds_centre() -> None:
    rule = CenteredClipping(1.0, iterations=1)
    first = rule(np.array([[3.0, 4.0]], dtype=np.float32)).aggregate
    centre = rule.centre
    assert centre is not None
    assert_allclose(centre, first)
    second = rule(np.array([[3.0, 4.0]], dtype=np.float32)).aggregate
    assert_allclose(second, [1.2, 1.6], rtol=1e-6)
    assert rule.rounds == 2


def test_one_step_with_the_automatic_radius_is_clipping_vr() -> None:
    rng = np.random.default_rng(0)
    centred, clipped = CenteredClipping(None, iterations=1), ClippingVR()
    for _ in range(4):
        updates = rng.normal(size=(9, 5)).astype(np.float32)
        weights = rng.uniform(0.1, 1.0, size=9)
        assert_allclose(centred(updates, weights).aggregate, clipped(updates, weights).aggregate)


def test_a_minority_of_huge_updates_moves_the_centre_by_a_bounded_amount() -> None:
    rng = np.random.default_rng(1)
    rule = CenteredClipping(clip_threshold=1.0, iterations=3)
    honest = (0.5 + 0.1 * rng.normal(size=(16, 10))).astype(np.float32)
    for _ in range(5):
        rule(honest)
    attacked = np.vstack([honest, np.full((4, 10), 1e6, dtype=np.float32)])
    aggregate = rule(attacked).aggregate
    assert np.linalg.norm(aggregate - honest.mean(axis=0)) <= 3 * 4 / 20 * 1.0 + 0.1


def test_updates_of_another_dimension_than_the_centre_are_rejected() -> None:
    rule = CenteredClipping()
    rule(np.zeros((3, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="dimension"):
        rule(np.zeros((3, 4), dtype=np.float32))


def test_invalid_state_is_rejected() -> None:
    with pytest.raises(ValueError, match="centered-clipping state"):
        CenteredClipping().load_state_dict({"version": 1, "rounds": 0, "dim": 3, "centre": None})


def test_reset_forgets_the_centre() -> None:
    rule = CenteredClipping()
    rule(np.ones((3, 2), dtype=np.float32))
    rule.reset()
    assert rule.centre is None
    assert rule.rounds == 0


@pytest.mark.parametrize(
    ("parameter", "value"),
    [("clip_threshold", 0.0), ("clip_threshold", float("nan")), ("iterations", 0)],
)
def test_invalid_hyperparameters_are_rejected_by_name(parameter: str, value: object) -> None:
    with pytest.raises(ValueError, match=parameter):
        CenteredClipping(**{parameter: value})  # type: ignore[arg-type]
