from __future__ import annotations

import numpy as np
import pytest

from byzedge.edge_agent.seams import LocalData
from byzedge.edge_agent.training import TrainingConfig, shuffled_batches, train_local, usable_rows
from byzedge.models import (
    DigitsSplit,
    ModelSpec,
    OnnxClassifier,
    export_onnx,
    get_model_spec,
    initial_parameters,
    load_digits_split,
)


@pytest.fixture(scope="module")
def digits() -> DigitsSplit:
    return load_digits_split()


@pytest.fixture(scope="module")
def mlp() -> ModelSpec:
    return get_model_spec("mlp")


def _cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(labels.size), labels].mean())


def test_train_local_returns_a_float32_delta_of_dim(mlp: ModelSpec, digits: DigitsSplit) -> None:
    init = initial_parameters(mlp, np.random.default_rng(0))
    data = LocalData(digits.train_x[:64], digits.train_y[:64])
    delta = train_local(mlp, init, data, TrainingConfig(), seed=0)
    assert delta.dtype == np.float32
    assert delta.shape == (mlp.dim,)
    assert np.all(np.isfinite(delta))
    assert np.abs(delta).max() > 0


def test_local_training_lowers_the_training_loss(mlp: ModelSpec, digits: DigitsSplit) -> None:
    init = initial_parameters(mlp, np.random.default_rng(0))
    data = LocalData(digits.train_x[:300], digits.train_y[:300])
    delta = train_local(mlp, init, data, TrainingConfig(epochs=5), seed=0)
    before = OnnxClassifier(export_onnx(mlp, init)).logits(data.features)
    after = OnnxClassifier(export_onnx(mlp, init + delta)).logits(data.features)
    assert _cross_entropy(after, data.labels) < 0.7 * _cross_entropy(before, data.labels)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_three_rounds_of_local_training_reach_85_percent_test_accuracy(
    name: str, digits: DigitsSplit
) -> None:
    spec = get_model_spec(name)
    params = initial_parameters(spec, np.random.default_rng(0))
    data = LocalData(digits.train_x, digits.train_y)
    for round_number in range(3):
        params = params + train_local(spec, params, data, TrainingConfig(), seed=round_number)
    accuracy = OnnxClassifier(export_onnx(spec, params)).accuracy(digits.test_x, digits.test_y)
    assert accuracy > 0.85


def test_rows_with_nan_features_are_ignored(mlp: ModelSpec, digits: DigitsSplit) -> None:
    init = initial_parameters(mlp, np.random.default_rng(0))
    clean = LocalData(digits.train_x[:40], digits.train_y[:40])
    garbage_x = np.full((10, 64), np.nan, dtype=np.float32)
    garbage_x[:, 1:] = 0.5  # one bad reading is enough to drop the row
    garbage_x[5, 0] = np.inf
    dirty = LocalData(
        np.concatenate([clean.features, garbage_x]),
        np.concatenate([clean.labels, np.zeros(10, dtype=np.int64)]),
    )
    config = TrainingConfig(batch_size=8)
    np.testing.assert_array_equal(
        train_local(mlp, init, dirty, config, seed=4),
        train_local(mlp, init, clean, config, seed=4),
    )


def test_usable_rows_keeps_finite_rows_with_a_known_label(mlp: ModelSpec) -> None:
    features = np.full((5, 64), 0.5, dtype=np.float32)
    features[1, 3] = np.nan
    features[2, 0] = -np.inf
    labels = np.array([0, 1, 2, 10, 9])

    kept_x, kept_y = usable_rows(mlp, LocalData(features, labels))

    np.testing.assert_array_equal(kept_y, [0, 9])
    assert kept_x.shape == (2, 64)
    assert kept_x.dtype == np.float32
    assert kept_y.dtype == np.int64


def test_usable_rows_rejects_labels_that_do_not_match_the_rows(mlp: ModelSpec) -> None:
    data = LocalData(np.zeros((4, 64), dtype=np.float32), np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="labels"):
        usable_rows(mlp, data)


def test_shuffled_batches_visit_every_row_once_per_epoch_in_batches() -> None:
    batches = shuffled_batches(10, TrainingConfig(epochs=2, batch_size=4), seed=3)

    assert [len(batch) for batch in batches] == [4, 4, 2, 4, 4, 2]
    for epoch in (batches[:3], batches[3:]):
        assert sorted(int(i) for batch in epoch for i in batch) == list(range(10))
    again = shuffled_batches(10, TrainingConfig(epochs=2, batch_size=4), seed=3)
    assert all(a.equal(b) for a, b in zip(batches, again, strict=True))


def test_no_usable_rows_gives_a_zero_delta(mlp: ModelSpec) -> None:
    init = initial_parameters(mlp, np.random.default_rng(0))
    data = LocalData(np.full((5, 64), np.nan, dtype=np.float32), np.zeros(5, dtype=np.int64))
    delta = train_local(mlp, init, data, TrainingConfig(), seed=0)
    assert delta.dtype == np.float32
    np.testing.assert_array_equal(delta, np.zeros(mlp.dim, dtype=np.float32))


def test_empty_local_data_gives_a_zero_delta(mlp: ModelSpec) -> None:
    init = initial_parameters(mlp, np.random.default_rng(0))
    data = LocalData(np.zeros((0, 64), dtype=np.float32), np.zeros(0, dtype=np.int64))
    assert not train_local(mlp, init, data, TrainingConfig(), seed=0).any()


def test_rows_with_out_of_range_labels_are_ignored(mlp: ModelSpec, digits: DigitsSplit) -> None:
    init = initial_parameters(mlp, np.random.default_rng(0))
    clean = LocalData(digits.train_x[:20], digits.train_y[:20])
    dirty = LocalData(
        np.concatenate([clean.features, digits.train_x[20:22]]),
        np.concatenate([clean.labels, np.array([10, -1], dtype=np.int64)]),
    )
    np.testing.assert_array_equal(
        train_local(mlp, init, dirty, TrainingConfig(), seed=1),
        train_local(mlp, init, clean, TrainingConfig(), seed=1),
    )


def test_same_seed_gives_an_identical_delta(mlp: ModelSpec, digits: DigitsSplit) -> None:
    init = initial_parameters(mlp, np.random.default_rng(0))
    data = LocalData(digits.train_x[:200], digits.train_y[:200])
    config = TrainingConfig(momentum=0.9)
    a = train_local(mlp, init, data, config, seed=11)
    b = train_local(mlp, init, data, config, seed=11)
    np.testing.assert_array_equal(a, b)


def test_different_seeds_shuffle_differently(mlp: ModelSpec, digits: DigitsSplit) -> None:
    init = initial_parameters(mlp, np.random.default_rng(0))
    data = LocalData(digits.train_x[:200], digits.train_y[:200])
    a = train_local(mlp, init, data, TrainingConfig(), seed=1)
    b = train_local(mlp, init, data, TrainingConfig(), seed=2)
    assert not np.array_equal(a, b)


def test_train_local_leaves_the_global_params_untouched(
    mlp: ModelSpec, digits: DigitsSplit
) -> None:
    init = initial_parameters(mlp, np.random.default_rng(0))
    copy = init.copy()
    train_local(mlp, init, LocalData(digits.train_x[:32], digits.train_y[:32]), TrainingConfig(), 0)
    np.testing.assert_array_equal(init, copy)


def test_train_local_rejects_params_of_the_wrong_length(
    mlp: ModelSpec, digits: DigitsSplit
) -> None:
    data = LocalData(digits.train_x[:8], digits.train_y[:8])
    with pytest.raises(ValueError, match="length"):
        train_local(mlp, np.zeros(10, dtype=np.float32), data, TrainingConfig(), seed=0)


def test_train_local_rejects_features_of_the_wrong_width(mlp: ModelSpec) -> None:
    init = np.zeros(mlp.dim, dtype=np.float32)
    data = LocalData(np.zeros((4, 63), dtype=np.float32), np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match="features"):
        train_local(mlp, init, data, TrainingConfig(), seed=0)


@pytest.mark.parametrize(
    ("field", "value"),
    [("epochs", 0), ("learning_rate", 0.0), ("batch_size", 0), ("momentum", 1.0)],
)
def test_training_config_rejects_bad_values(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        TrainingConfig(**{field: value})  # type: ignore[arg-type]
