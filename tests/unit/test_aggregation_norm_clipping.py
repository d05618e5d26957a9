from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

from byzedge.coordinator.aggregation.norm_clipping import NormClipping


def test_updates_longer_than_the_radius_are_scaled_down_before_the_mean() -> None:
    updates = np.array([[3.0, 4.0], [0.0, 1.0]], dtype=np.float32)
    result = NormClipping(clip_norm=1.0)(updates)
    assert_allclose(result.aggregate, [0.3, 0.9], rtol=1e-6)
    assert result.diagnostics.clip_factors is not None
    assert_allclose(result.diagnostics.clip_factors, [0.2, 1.0])


def test_automatic_radius_is_the_median_norm() -> None:
    updates = np.array([[1.0], [2.0], [3.0], [4.0], [5.0]], dtype=np.float32)
    result = NormClipping()(updates)
    assert_allclose(result.aggregate, [(1 + 2 + 3 + 3 + 3) / 5], rtol=1e-6)


def test_one_attacker_moves_the_mean_by_at_most_its_share_of_the_radius() -> None:
    updates = np.zeros((10, 4), dtype=np.float32)
    updates[7] = 1e9
    aggregate = NormClipping(clip_norm=2.0)(updates).aggregate
    assert np.linalg.norm(aggregate) == pytest.approx(2.0 / 10, rel=1e-5)


@pytest.mark.parametrize("value", [0.0, -1.0, float("inf"), "1"])
def test_invalid_clip_norm_is_rejected(value: object) -> None:
    with pytest.raises(ValueError, match="clip_norm"):
        NormClipping(clip_norm=value)  # type: ignore[arg-type]
