"""Any device data (issue 11): shapes, losses, sources, per-channel faults, bad rounds."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from byzedge.edge_agent.config import DataConfig, TrainingSettings
from byzedge.edge_agent.seams import LocalData
from byzedge.edge_agent.sensors import CsvSource, FunctionSource, NpzSource, build_source
from byzedge.edge_agent.training import TrainingConfig, train_local, usable_rows
from byzedge.faults import Drift, Dropout, FaultInjector, StuckAt
from byzedge.faults.errors import FaultConfigError
from byzedge.models import ModelSpec, ParamSpec, get_model_spec, initial_parameters
from byzedge.models.tasks import get_task

SENSOR = get_model_spec("sensor-cnn")  # (6, 50) windows, 4 classes
CNN = get_model_spec("cnn")  # (1, 8, 8) images
MLP = get_model_spec("mlp")  # (64,) tabular rows


class Fixed:
    """A source that returns the same data every round."""

    def __init__(self, data: LocalData) -> None:
        self.data = data

    def read(self, round_number: int) -> LocalData:
        return self.data


def windows(m: int = 12, seed: int = 0) -> LocalData:
    rng = np.random.default_rng(seed)
    return LocalData(
        rng.random((m, 6, 50), dtype=np.float32), rng.integers(0, 4, m).astype(np.int64)
    )


# -- shapes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "shape"),
    [(SENSOR, (6, 50)), (SENSOR, (300,)), (CNN, (64,)), (MLP, (64,))],
)
def test_samples_of_the_models_shape_or_flattened_train(
    spec: ModelSpec, shape: tuple[int, ...]
) -> None:
    rng = np.random.default_rng(0)
    data = LocalData(rng.random((10, *shape), dtype=np.float32), np.zeros(10, np.int64))
    x, _y = usable_rows(spec, data)
    assert x.shape == (10, spec.input_dim)
    params = initial_parameters(spec, rng)
    delta = train_local(spec, params, data, TrainingConfig(), seed=0)
    assert np.isfinite(delta).all()
    assert np.abs(delta).sum() > 0


def test_images_of_the_models_shape_are_flattened_for_it() -> None:
    image_model = ModelSpec("image", (3, 8, 8), 10, (ParamSpec("w", (1, 1)),))
    data = LocalData(np.ones((5, 3, 8, 8), np.float32), np.arange(5, dtype=np.int64))
    x, y = usable_rows(image_model, data)
    assert x.shape == (5, 192)
    assert y.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match=r"\(m, 3, 8, 8\) or \(m, 192\)"):
        usable_rows(image_model, LocalData(np.ones((5, 8, 8, 3), np.float32), y))


def test_windows_of_another_shape_are_refused_with_both_shapes() -> None:
    data = LocalData(np.zeros((4, 3, 50), np.float32), np.zeros(4, np.int64))
    with pytest.raises(ValueError, match=r"\(m, 6, 50\) or \(m, 300\), got \(4, 3, 50\)"):
        usable_rows(SENSOR, data)


def test_float_class_labels_are_refused() -> None:
    data = LocalData(np.zeros((4, 64), np.float32), np.zeros(4, np.float32))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="integers"):
        usable_rows(MLP, data)


# -- regression --------------------------------------------------------------------------


def test_mse_regression_on_a_synthetic_task_lowers_the_loss() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((256, 64), dtype=np.float32)
    weights = rng.normal(size=(64, 10)).astype(np.float32) / 8
    y = (x @ weights).astype(np.float32)  # 10 real targets: mlp's 10 outputs
    data = LocalData(x, y)  # type: ignore[arg-type]
    config = TrainingConfig(loss="mse", learning_rate=0.05, epochs=1)
    params = initial_parameters(MLP, rng)

    def mse(p: np.ndarray) -> float:
        import torch  # noqa: PLC0415

        from byzedge.models.params import load_vector_into  # noqa: PLC0415
        from byzedge.models.torch_modules import build_module  # noqa: PLC0415

        module = build_module(MLP)
        load_vector_into(module, p)
        with torch.no_grad():
            out = module(torch.from_numpy(x)).numpy()
        return float(np.mean((out - y) ** 2))

    before = mse(params)
    for round_number in range(5):
        params = params + train_local(MLP, params, data, config, seed=round_number)
    assert mse(params) < 0.5 * before  # measured: 0.206 -> 0.085


def test_r2_is_one_for_a_perfect_fit_and_zero_for_the_mean() -> None:
    task = get_task("mse")
    y = np.array([[1.0], [2.0], [3.0]], np.float32)
    assert task.metric_name == "r2"
    assert task.metric(y, y) == pytest.approx(1.0)
    assert task.metric(np.full_like(y, 2.0), y) == pytest.approx(0.0)
    assert get_task("cross-entropy").metric(np.eye(3, dtype=np.float32), np.arange(3)) == 1.0


def test_an_unknown_loss_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match="cross-entropy, mse"):
        TrainingConfig(loss="hinge")  # type: ignore[arg-type]


def test_batched_training_takes_mse_like_train_local() -> None:
    from byzedge.fleet_sim.batched_training import train_many  # noqa: PLC0415

    rng = np.random.default_rng(1)
    datasets = [
        LocalData(rng.random((20, 64), dtype=np.float32), rng.random((20, 10), dtype=np.float32))  # type: ignore[arg-type]
        for _ in range(3)
    ]
    config = TrainingConfig(loss="mse", learning_rate=0.05)
    params = initial_parameters(MLP, rng)
    batched = train_many(MLP, params, datasets, config, [1, 2, 3])
    single = [
        train_local(MLP, params, d, config, seed=s)
        for d, s in zip(datasets, [1, 2, 3], strict=True)
    ]
    np.testing.assert_allclose(batched, np.stack(single), atol=1e-5)


# -- sources -----------------------------------------------------------------------------


def test_npz_windows_load_with_their_shape(tmp_path: Path) -> None:
    data = windows()
    path = tmp_path / "w.npz"
    np.savez(path, features=data.features, labels=data.labels)
    read = NpzSource(path).read(0)
    assert read.features.shape == (12, 6, 50)
    np.testing.assert_array_equal(read.labels, data.labels)


def test_csv_rows_with_a_feature_shape_become_windows(tmp_path: Path) -> None:
    data = windows(m=3)
    path = tmp_path / "w.csv"
    header = ",".join(f"f{i}" for i in range(300)) + ",label"
    lines = [header] + [
        ",".join(f"{v:.6f}" for v in row) + f",{label}"
        for row, label in zip(data.features.reshape(3, -1), data.labels, strict=False)
    ]
    path.write_text("\n".join(lines) + "\n")
    config = DataConfig(source="csv", path=path, feature_shape=[6, 50])
    read = build_source(config).read(0)
    assert read.features.shape == (3, 6, 50)
    assert read.labels.dtype == np.int64
    np.testing.assert_allclose(read.features, data.features, atol=1e-6)


def test_csv_real_targets_are_regression_targets(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("a,b,y\n0.1,0.2,1.5\n0.3,,2.5\n")
    read = CsvSource(path, ["y"]).read(0)
    assert read.labels.dtype == np.float32
    assert np.isnan(read.features[1, 1])  # an empty cell reads as NaN (training drops it)


def test_csv_with_words_in_the_numbers_is_a_value_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("a,label\nhigh,1\n")
    with pytest.raises(ValueError, match="not a numeric table"):
        CsvSource(path, ["label"]).read(0)


@pytest.fixture
def user_module() -> Iterator[types.ModuleType]:
    module = types.ModuleType("byzedge_test_user_data")
    module.live = lambda round_number: windows(m=4, seed=round_number)  # type: ignore[attr-defined]
    module.fixed = lambda: (np.zeros((2, 64)), np.array([1, 2]))  # type: ignore[attr-defined]

    def broken(round_number: int) -> LocalData:
        raise RuntimeError("sensor bus timeout")

    module.broken = broken  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    yield module
    del sys.modules[module.__name__]


def test_a_user_function_gives_each_rounds_arrays(user_module: types.ModuleType) -> None:
    source = FunctionSource("byzedge_test_user_data:live")
    assert source.read(3).features.shape == (4, 6, 50)
    np.testing.assert_array_equal(source.read(3).features, windows(m=4, seed=3).features)
    fixed = build_source(DataConfig(source="function", function="byzedge_test_user_data:fixed"))
    assert fixed.read(0).labels.tolist() == [1, 2]


def test_a_failing_or_missing_user_function_is_a_value_error_naming_it(
    user_module: types.ModuleType,
) -> None:
    with pytest.raises(ValueError, match="broken raised RuntimeError: sensor bus timeout"):
        FunctionSource("byzedge_test_user_data:broken").read(0)
    with pytest.raises(ValueError, match="no_such_package_xyz:f: cannot import"):
        FunctionSource("no_such_package_xyz:f").read(0)


def test_a_function_source_needs_its_reference() -> None:
    with pytest.raises(ValueError, match=r"data\.function"):
        DataConfig(source="function")


# -- per-channel faults ------------------------------------------------------------------


def test_stuck_at_one_axis_freezes_that_channel_only() -> None:
    data = windows()
    faulty = StuckAt(Fixed(data), channels=[2], value=0.5).read(0)
    assert np.all(faulty.features[:, 2] == 0.5)
    others = [0, 1, 3, 4, 5]
    np.testing.assert_array_equal(faulty.features[:, others], data.features[:, others])


def test_stuck_at_one_axis_repeats_its_first_window() -> None:
    data = windows()
    fault = StuckAt(Fixed(data), channels=[0], start_round=1)
    later = LocalData(data.features + 0.25, data.labels)
    fault.source = Fixed(data)
    fault.read(1)  # frozen here
    fault.source = Fixed(later)
    faulty = fault.read(2)
    np.testing.assert_array_equal(faulty.features[:, 0], data.features[:, 0])
    np.testing.assert_array_equal(faulty.features[:, 1], later.features[:, 1])


def test_drift_on_one_channel_leaves_the_others() -> None:
    data = LocalData(np.full((5, 6, 50), 0.5, np.float32), np.zeros(5, np.int64))
    faulty = Drift(Fixed(data), channels=[4], intensity=0.1).read(2)
    assert np.allclose(faulty.features[:, 4], 0.8)
    assert np.all(faulty.features[:, :4] == 0.5)
    assert np.all(faulty.features[:, 5] == 0.5)


def test_channels_of_flat_rows_are_columns() -> None:
    data = LocalData(np.full((3, 64), 0.5, np.float32), np.zeros(3, np.int64))
    faulty = Drift(Fixed(data), channels=[0, 63], intensity=0.2).read(0)
    assert np.allclose(faulty.features[:, [0, 63]], 0.7)
    assert np.all(faulty.features[:, 1:63] == 0.5)


def test_a_channel_beyond_the_data_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"channels \[7\] do not fit"):
        Drift(Fixed(windows()), channels=[7]).read(0)


def test_bad_channel_lists_are_refused_in_the_plan() -> None:
    with pytest.raises(FaultConfigError, match="channels"):
        FaultInjector([{"name": "drift", "params": {"channels": [-1]}}])
    with pytest.raises(FaultConfigError, match="single channels"):
        Dropout(Fixed(windows()), missing=True, channels=[1])


def test_a_plan_can_put_a_fault_on_one_channel() -> None:
    injector = FaultInjector([{"name": "stuck-at", "params": {"channels": [1], "value": 0.0}}])
    faulty = injector.wrap_source(Fixed(windows())).read(0)
    assert np.all(faulty.features[:, 1] == 0.0)
    assert np.any(faulty.features[:, 0] != 0.0)


# -- bad data: the agent's trainer refuses it with a reason --------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (LocalData(np.zeros((0, 6, 50), np.float32), np.zeros(0, np.int64)), "0 rows"),
        (LocalData(np.full((3, 6, 50), np.nan, np.float32), np.zeros(3, np.int64)), "NaN"),
        (LocalData(np.zeros((3, 6, 50), np.float32), np.full(3, 9, np.int64)), r"\[0, 4\)"),
        (LocalData(np.zeros((3, 5, 50), np.float32), np.zeros(3, np.int64)), "shape"),
    ],
)
def test_an_agents_trainer_refuses_unusable_data_with_a_reason(
    data: LocalData, reason: str
) -> None:
    config = TrainingConfig.from_settings(TrainingSettings())
    params = initial_parameters(SENSOR, np.random.default_rng(0))
    with pytest.raises(ValueError, match=reason):
        train_local(SENSOR, params, data, config, seed=0)
