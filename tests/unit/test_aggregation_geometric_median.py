from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

from byzedge.coordinator.aggregation.geometric_median import GeometricMedian, smoothed_weiszfeld


def _objective(updates: np.ndarray, z: np.ndarray) -> float:
    return float(np.linalg.norm(updates.astype(np.float64) - z, axis=1).sum())


def test_geometric_median_of_points_on_a_line_is_their_median() -> None:
    updates = np.array([[0.0], [1.0], [2.0], [3.0], [100.0]], dtype=np.float32)
    result = GeometricMedian(nu=1e-6, max_iter=500, tol=1e-9)(updates)
    assert_allclose(result.aggregate, [2.0], atol=1e-3)


def test_geometric_median_of_a_square_is_its_centre() -> None:
    square = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]], dtype=np.float32)
    assert_allclose(GeometricMedian()(square).aggregate, [1.0, 1.0], atol=1e-5)


def test_geometric_median_beats_the_mean_and_the_coordinate_median_on_its_objective() -> None:
    rng = np.random.default_rng(0)
    updates = (rng.normal(size=(15, 6)) * rng.uniform(0.5, 5, size=(15, 1))).astype(np.float32)
    z = GeometricMedian(nu=1e-6, max_iter=1000, tol=1e-12)(updates).aggregate
    assert _objective(updates, z) <= _objective(updates, updates.mean(axis=0)) + 1e-6
    assert _objective(updates, z) <= _objective(updates, np.median(updates, axis=0)) + 1e-6


def test_geometric_median_resists_a_minority_of_huge_outliers() -> None:
    rng = np.random.default_rng(1)
    honest = rng.normal(size=(20, 10)).astype(np.float32)
    outliers = np.full((5, 10), 1e6, dtype=np.float32)
    result = GeometricMedian()(np.vstack([honest, outliers]))
    assert np.linalg.norm(result.aggregate - honest.mean(axis=0)) < 1.0


def test_a_dominant_weight_pins_the_geometric_median() -> None:
    updates = np.array([[0.0, 0.0], [5.0, 1.0], [-3.0, 4.0]], dtype=np.float32)
    result = GeometricMedian(nu=1e-6, max_iter=1000)(updates, np.array([10.0, 1.0, 1.0]))
    assert_allclose(result.aggregate, [0.0, 0.0], atol=1e-4)


def test_iterations_stop_early_once_converged() -> None:
    updates = np.tile(np.array([1.0, 2.0], dtype=np.float32), (5, 1))
    _, distances, iterations = smoothed_weiszfeld(updates, None, 0.1, 100, 1e-6)
    assert iterations == 1
    assert_allclose(distances, 0.0)


@pytest.mark.parametrize(
    ("parameter", "value"),
    [("nu", 0.0), ("nu", -1.0), ("max_iter", 0), ("max_iter", 2.5), ("tol", 0.0)],
)
def test_invalid_hyperparameters_are_rejected_by_name(parameter: str, value: object) -> None:
    with pytest.raises(ValueError, match=parameter):
        GeometricMedian(**{parameter: value})  # type: ignore[arg-type]
