"""``byzedge.simulate``: a user's model and arrays through the in-memory simulator.

The model is defined here (a 1-D convolutional network over windows of 3 channels x 32
steps), the data made here: the class of a window is the channel whose readings sit
higher, so a fleet that learns anything gets far above chance (1/3).
"""

from __future__ import annotations

import inspect
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import byzedge
from byzedge.fleet_sim.scenario import Scenario

CHANNELS, STEPS, CLASSES = 3, 32, 3


class WindowNet(nn.Module):
    """Conv1d -> ReLU -> mean over time -> linear head."""

    input_shape = (CHANNELS, STEPS)

    def __init__(self, outputs: int = CLASSES) -> None:
        super().__init__()
        self.conv = nn.Conv1d(CHANNELS, 8, kernel_size=5, padding=2)
        self.head = nn.Linear(8, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).relu().mean(dim=2))


def make_window_net() -> nn.Module:
    return WindowNet()


def windows(seed: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy windows whose class is the channel with an offset of +1."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, size=m)
    x = rng.standard_normal((m, CHANNELS, STEPS)).astype(np.float32) * 0.5
    x[np.arange(m), labels, :] += 1.0
    return x, labels.astype(np.int64)


def test_a_users_conv_net_learns_the_users_windows_under_attack() -> None:
    torch.manual_seed(0)
    result = byzedge.simulate(
        model=WindowNet(),
        data=windows(0, 400),
        test_data=windows(1, 300),
        devices=10,
        rounds=6,
        byzantine_defense="clipping-vr",
        attack="sign-flip",
        byzantine_fraction=0.2,
        learning_rate=0.1,
        seed=0,
    )

    assert result.metric == "accuracy"
    assert result.final_accuracy is not None
    assert result.final_accuracy > 0.9  # chance is 1/3
    assert len(result.rounds) == 6
    assert [r.round for r in result.rounds] == [1, 2, 3, 4, 5, 6]
    assert all(r.accepted == 10 for r in result.rounds)  # sign-flip is well-formed
    assert len(result.compromised) == 2
    # What the anomaly scorer flagged is reported per round, by device id.
    assert all(set(r.flagged) <= {f"dev-{i:03d}" for i in range(10)} for r in result.rounds)
    assert result.scenario["defense"] == "clipping-vr"
    assert result.scenario["model"] == "custom"


def test_the_trained_module_holds_the_final_parameters_and_predicts_as_evaluated() -> None:
    test_x, test_y = windows(1, 200)
    result = byzedge.simulate(
        model=make_window_net, data=windows(0, 300), test_data=(test_x, test_y), rounds=3
    )

    module = result.module()
    flat = torch.cat([p.detach().reshape(-1) for p in module.parameters()]).numpy()
    np.testing.assert_array_equal(flat, result.params)
    with torch.no_grad():
        predicted = module(torch.from_numpy(test_x)).argmax(dim=1).numpy()
    assert round(float(np.mean(predicted == test_y)), 4) == pytest.approx(
        result.final_accuracy, abs=1e-3
    )


class Level(nn.Module):
    """One output: a regression of the windows' level."""

    input_shape = (CHANNELS, STEPS)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(CHANNELS, 4, kernel_size=3, padding=1)
        self.head = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).mean(dim=2))


def levels(seed: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows around a level in [-1, 1]; the target is the level."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(-1.0, 1.0, size=m).astype(np.float32)
    x = rng.standard_normal((m, CHANNELS, STEPS)).astype(np.float32) * 0.3 + level[:, None, None]
    return x, level


def test_a_regression_with_mse_reports_r2_by_name() -> None:
    result = byzedge.simulate(
        model=Level,
        data=levels(0, 300),
        test_data=levels(1, 200),
        loss="mse",
        devices=6,
        rounds=5,
        learning_rate=0.05,
    )

    assert result.metric == "r2"
    assert result.final_accuracy is not None
    assert result.final_accuracy > 0.8  # predicting the mean scores 0
    assert all(r.accuracy is not None for r in result.rounds)


def test_flat_rows_are_taken_for_a_module_that_declares_its_input_shape() -> None:
    x, y = windows(0, 120)
    result = byzedge.simulate(model=WindowNet(), data=(x.reshape(120, -1), y), rounds=1, devices=4)

    assert result.final_accuracy is not None


def test_an_unknown_keyword_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'devicez'.*'devices'"):
        byzedge.simulate(model=WindowNet(), data=windows(0, 60), devicez=3)


def test_a_key_under_both_its_names_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"byzantine_defense.*defense"):
        byzedge.simulate(defense="mean", byzantine_defense="krum")


def test_the_configurations_name_of_the_defense_reaches_the_scenario() -> None:
    result = byzedge.simulate(byzantine_defense="coordinate-median", devices=4, rounds=1)

    assert result.scenario["defense"] == "coordinate-median"


def test_every_scenario_key_is_a_keyword_with_the_scenarios_default() -> None:
    parameters = inspect.signature(byzedge.simulate).parameters
    for name, info in Scenario.model_fields.items():
        if name == "model":  # simulate's first argument: a module, a factory or a name
            continue
        assert name in parameters, name
        assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert parameters[name].default == info.get_default(call_default_factory=True), name
    assert parameters["byzantine_defense"].default == Scenario.model_fields["defense"].default


def test_data_that_does_not_fit_the_model_is_refused_with_both_shapes() -> None:
    x = np.zeros((20, CHANNELS, 64), dtype=np.float32)
    y = np.zeros(20, dtype=np.int64)
    with pytest.raises(ValueError, match=r"\(m, 3, 32\) or \(m, 96\).*got \(20, 3, 64\)"):
        byzedge.simulate(model=WindowNet(), data=(x, y))


def test_real_valued_labels_under_cross_entropy_point_to_mse() -> None:
    x, level = levels(0, 20)
    with pytest.raises(ValueError, match="loss='mse'"):
        byzedge.simulate(model=Level(), data=(x, level))


def test_a_refused_scenario_value_names_the_key() -> None:
    with pytest.raises(ValueError, match="byzantine_fraction"):
        byzedge.simulate(byzantine_fraction=1.5)


def test_a_training_method_runs_through_the_same_call() -> None:
    result = byzedge.simulate(
        model=WindowNet(),
        data=windows(0, 200),
        test_data=windows(1, 100),
        algorithm="byz-vr-marina",
        method={"step_size": 0.5, "batch_size": 16},
        devices=4,
        rounds=2,
    )

    assert result.scenario["algorithm"] == "byz-vr-marina"
    assert len(result.rounds) == 2
    assert result.rounds[0].full_round is True


def test_import_byzedge_stays_light() -> None:
    # Even byzedge.simulate itself: torch and the simulator load when it runs.
    code = (
        "import sys, byzedge; light = 'byzedge.api' not in sys.modules; "
        "assert callable(byzedge.simulate) and callable(byzedge.init); "
        "print(light, 'torch' in sys.modules, 'byzedge.fleet_sim.simulator' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert out.split() == ["True", "False", "False"]
