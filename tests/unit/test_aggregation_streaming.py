from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

from byzedge.coordinator.aggregation import build
from byzedge.coordinator.aggregation.base import StreamingUnavailableError
from byzedge.coordinator.aggregation.mean import Mean
from byzedge.coordinator.aggregation.norm_clipping import NormClipping


def test_mean_streams_a_weighted_mean() -> None:
    rule = Mean()
    rule.accumulate(np.array([0.0, 2.0], dtype=np.float32), 3.0)
    rule.accumulate(np.array([4.0, 2.0], dtype=np.float32))
    assert_allclose(rule.finish().aggregate, [1.0, 2.0])


def test_a_finished_stream_starts_over() -> None:
    rule = Mean()
    rule.accumulate(np.ones(2, dtype=np.float32))
    rule.finish()
    with pytest.raises(ValueError, match="no updates"):
        rule.finish()


def test_start_discards_an_unfinished_round() -> None:
    rule = Mean()
    rule.accumulate(np.full(2, 100.0, dtype=np.float32))
    rule.start(2)
    rule.accumulate(np.ones(2, dtype=np.float32))
    assert_allclose(rule.finish().aggregate, [1.0, 1.0])


@pytest.mark.parametrize("name", ["mean", "clipping-vr"])
def test_all_zero_weights_are_rejected_at_finish(name: str) -> None:
    rule = build(name, **({"clip_threshold": 1.0} if name == "clipping-vr" else {}))
    rule.accumulate(np.ones(2, dtype=np.float32), 0.0)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="positive sum"):
        rule.finish()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("update", "weight", "message"),
    [
        (np.ones(3, dtype=np.float32), 1.0, "shape"),
        (np.array([np.nan, 0.0], dtype=np.float32), 1.0, "NaN"),
        (np.ones(2, dtype=np.float32), -1.0, "weight"),
        (np.ones(2, dtype=np.float32), float("inf"), "weight"),
    ],
)
def test_malformed_streamed_updates_are_rejected(
    update: np.ndarray, weight: float, message: str
) -> None:
    rule = NormClipping(clip_norm=1.0)
    rule.start(2)
    with pytest.raises(ValueError, match=message):
        rule.accumulate(update, weight)


def test_a_matrix_is_not_a_streamed_update() -> None:
    with pytest.raises(ValueError, match="shape"):
        Mean().accumulate(np.ones((2, 2), dtype=np.float32))


def test_norm_clipping_streams_only_with_a_fixed_radius() -> None:
    with pytest.raises(StreamingUnavailableError, match="clip_norm"):
        NormClipping().accumulate(np.ones(2, dtype=np.float32))
    rule = NormClipping(clip_norm=1.0)
    rule.accumulate(np.array([3.0, 4.0], dtype=np.float32))
    rule.accumulate(np.array([0.5, 0.0], dtype=np.float32))
    result = rule.finish()
    assert_allclose(result.aggregate, [(0.6 + 0.5) / 2, 0.4], rtol=1e-6)
    assert result.diagnostics.clip_factors is not None
    assert_allclose(result.diagnostics.clip_factors, [0.2, 1.0])
