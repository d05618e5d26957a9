from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from byzedge.edge_agent.seams import LocalData, RoundContext
from byzedge.faults import SENSOR_FAULTS, GaussianNoise, SignFlip


class RandomSource:
    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.features = rng.random((12, 64), dtype=np.float32)
        self.labels = rng.integers(0, 10, size=12).astype(np.int64)

    def read(self, round_number: int) -> LocalData:
        return LocalData(features=self.features, labels=self.labels)


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(SENSOR_FAULTS)),
    intensity=st.floats(0.0, 1.0),
    probability=st.floats(0.0, 1.0),
    start_round=st.integers(0, 5),
    seed=st.integers(0, 2**32 - 1),
    round_number=st.integers(0, 12),
)
def test_every_sensor_fault_keeps_shape_labels_and_range(
    *,
    name: str,
    intensity: float,
    probability: float,
    start_round: int,
    seed: int,
    round_number: int,
) -> None:
    source = RandomSource(seed % 1000)
    fault = SENSOR_FAULTS[name](
        source, intensity=intensity, probability=probability, start_round=start_round, seed=seed
    )
    data = fault.read(round_number)
    assert data.features.shape == source.features.shape
    assert data.features.dtype == np.float32
    np.testing.assert_array_equal(data.labels, source.labels)
    if name != "bit-flip":  # bit flips leave the sensor range by design (NaN, inf, 1e38)
        finite = data.features[~np.isnan(data.features)]
        assert finite.min(initial=0.0) >= 0.0
        assert finite.max(initial=1.0) <= 1.0
    np.testing.assert_array_equal(fault.read(round_number).features, data.features)


@settings(max_examples=60, deadline=None)
@given(
    factor=st.floats(1e-3, 1e3),
    values=st.lists(st.floats(-1e3, 1e3, width=32), min_size=1, max_size=20),
)
def test_sign_flip_is_minus_factor_times_update(factor: float, values: list[float]) -> None:
    update = np.array(values, dtype=np.float32)
    ctx = RoundContext("d", 0, np.zeros(1, dtype=np.float32), np.random.default_rng(0))
    out = SignFlip(factor=factor)(update, ctx)
    np.testing.assert_array_equal(out, update * np.float32(-factor))


@settings(max_examples=30, deadline=None)
@given(size=st.integers(1, 50), seed=st.integers(0, 2**32 - 1))
def test_gaussian_noise_keeps_shape_and_dtype(size: int, seed: int) -> None:
    update = np.zeros(size, dtype=np.float32)
    ctx = RoundContext("d", 0, np.zeros(1, dtype=np.float32), np.random.default_rng(seed))
    out = GaussianNoise()(update, ctx)
    assert out.shape == (size,)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
