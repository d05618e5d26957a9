from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from byzedge.edge_agent.seams import LocalData, RoundContext
from byzedge.faults import GaussianNoise, LabelFlip, SignFlip


class FixedSource:
    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.features = rng.random((50, 64), dtype=np.float32)
        self.labels = np.arange(50, dtype=np.int64) % 10

    def read(self, round_number: int) -> LocalData:
        return LocalData(features=self.features, labels=self.labels)


def context(round_number: int = 0, seed: int = 0) -> RoundContext:
    return RoundContext(
        device_id="dev-1",
        round=round_number,
        global_params=np.zeros(8, dtype=np.float32),
        rng=np.random.default_rng(seed),
    )


def test_label_flip_maps_every_label_to_nine_minus_label() -> None:
    source = FixedSource()
    data = LabelFlip(source).read(0)
    np.testing.assert_array_equal(data.labels, 9 - source.labels)
    assert data.labels.dtype == np.int64


def test_label_flip_leaves_features_alone() -> None:
    source = FixedSource()
    np.testing.assert_array_equal(LabelFlip(source).read(0).features, source.features)


def test_unwrapped_source_is_unchanged_by_a_label_flip_elsewhere() -> None:
    source = FixedSource()
    LabelFlip(source).read(0)
    np.testing.assert_array_equal(source.read(0).labels, np.arange(50) % 10)


def test_label_flip_uses_num_classes() -> None:
    class Binary(FixedSource):
        def read(self, round_number: int) -> LocalData:
            return LocalData(features=self.features, labels=self.labels % 2)

    data = LabelFlip(Binary(), num_classes=2).read(0)
    np.testing.assert_array_equal(data.labels, 1 - np.arange(50) % 2)


def test_label_flip_refuses_labels_outside_num_classes() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        LabelFlip(FixedSource(), num_classes=5).read(0)


def test_label_flip_reads_honestly_before_start_round() -> None:
    source = FixedSource()
    attack = LabelFlip(source, start_round=3)
    np.testing.assert_array_equal(attack.read(2).labels, source.labels)
    np.testing.assert_array_equal(attack.read(3).labels, 9 - source.labels)


def test_sign_flip_returns_minus_factor_times_update() -> None:
    update = np.array([1.0, -2.0, 0.5, 0.0], dtype=np.float32)
    out = SignFlip(factor=3.0)(update, context())
    np.testing.assert_array_equal(out, np.array([-3.0, 6.0, -1.5, 0.0], dtype=np.float32))
    assert out.dtype == np.float32


def test_sign_flip_default_factor_is_four() -> None:
    update = np.ones(3, dtype=np.float32)
    np.testing.assert_array_equal(SignFlip()(update, context()), np.float32(-4.0))


def test_sign_flip_passes_update_before_start_round() -> None:
    update = np.ones(3, dtype=np.float32)
    np.testing.assert_array_equal(SignFlip(start_round=2)(update, context(1)), update)


def test_gaussian_noise_has_std_scale() -> None:
    update = np.zeros(20_000, dtype=np.float32)
    out = GaussianNoise(scale=1000.0)(update, context())
    assert out.dtype == np.float32
    assert out.shape == update.shape
    assert abs(float(out.std()) - 1000.0) < 20.0
    assert abs(float(out.mean())) < 20.0


def test_gaussian_noise_ignores_the_input() -> None:
    small = np.zeros(100, dtype=np.float32)
    large = np.full(100, 1e6, dtype=np.float32)
    np.testing.assert_array_equal(
        GaussianNoise(scale=1.0)(small, context(seed=4)),
        GaussianNoise(scale=1.0)(large, context(seed=4)),
    )


def test_gaussian_noise_draws_from_the_context_rng() -> None:
    update = np.zeros(10, dtype=np.float32)
    first = GaussianNoise()(update, context(seed=1))
    second = GaussianNoise()(update, context(seed=2))
    assert not np.array_equal(first, second)


@pytest.mark.parametrize(
    ("build", "param"),
    [
        (lambda: SignFlip(factor=0.0), "factor"),
        (lambda: SignFlip(factor=-1.0), "factor"),
        (lambda: SignFlip(factor=float("nan")), "factor"),
        (lambda: GaussianNoise(scale=0.0), "scale"),
        (lambda: GaussianNoise(mean=float("inf")), "mean"),
        (lambda: LabelFlip(FixedSource(), num_classes=1), "num_classes"),
        (lambda: LabelFlip(FixedSource(), num_classes=True), "num_classes"),
        (lambda: SignFlip(start_round=-2), "start_round"),
    ],
)
def test_bad_attack_parameter_raises_value_error_naming_it(
    build: Callable[[], object], param: str
) -> None:
    with pytest.raises(ValueError, match=param):
        build()
