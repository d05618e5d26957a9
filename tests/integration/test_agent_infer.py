"""``byzedge agent infer``: predictions from the stored global model, onnxruntime only."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from byzedge.fleet_sim.brokers import BrokerHandle
from byzedge.fleet_sim.fleet import FleetSpec, InProcessFleet
from byzedge.models.datasets import load_digits_split

pytestmark = pytest.mark.broker

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 120


def _agent_toml(path: Path, workdir: Path, state_dir: Path) -> Path:
    path.write_text(
        f'fleet = "infer"\n'
        f'device_id = "dev-000"\n'
        f'signing_key = "{workdir / "keys" / "dev-000.key"}"\n'
        f'coordinator_key = "{workdir / "keys" / "coordinator.pub"}"\n'
        f'state_dir = "{state_dir}"\n'
    )
    return path


def _byzedge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "byzedge", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


@pytest.fixture(scope="module")
def trained_fleet(mosquitto_broker: BrokerHandle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fleet folder after a 3-device, 2-round run on the real broker."""
    workdir = tmp_path_factory.mktemp("infer-fleet")
    spec = FleetSpec(
        fleet=f"infer-{uuid.uuid4().hex[:8]}",
        broker_url=mosquitto_broker.url,
        devices=3,
        rounds=2,
        defense="mean",
    )
    fleet = InProcessFleet(spec, workdir)
    assert fleet.run() == 0
    assert fleet.coordinator.state.completed_round == 2
    return workdir


@pytest.fixture(scope="module")
def agent_config(trained_fleet: Path) -> Path:
    """An agent.toml whose state_dir is dev-000's, after the run."""
    return _agent_toml(
        trained_fleet / "agent.toml", trained_fleet, trained_fleet / "agents" / "dev-000"
    )


@pytest.fixture(scope="module")
def infer_result(agent_config: Path) -> subprocess.CompletedProcess[str]:
    """``byzedge agent infer`` on the digits test set, run once for the module."""
    return _byzedge("agent", "infer", "--config", str(agent_config))


def test_infer_exits_0_with_one_json_document(
    infer_result: subprocess.CompletedProcess[str],
) -> None:
    assert infer_result.returncode == 0, infer_result.stderr
    assert isinstance(json.loads(infer_result.stdout), dict)


def test_infer_prints_predictions_for_the_digits_test_set(
    infer_result: subprocess.CompletedProcess[str],
) -> None:
    report = json.loads(infer_result.stdout)
    test_y = load_digits_split().test_y
    assert len(report["predictions"]) == len(test_y)
    assert set(report["predictions"]) <= set(range(10))


def test_infer_reports_accuracy_of_the_trained_model(
    infer_result: subprocess.CompletedProcess[str],
) -> None:
    report = json.loads(infer_result.stdout)
    assert report["model"] == "mlp"
    assert report["version"] >= 1
    assert 0.5 < report["accuracy"] <= 1.0


def test_infer_never_imports_torch(agent_config: Path) -> None:
    script = (
        "import sys\n"
        "from byzedge.cli import main\n"
        f"code = main(['agent', 'infer', '--config', {str(agent_config)!r}])\n"
        "assert code == 0, code\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not loaded, loaded[:5]\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "predictions" in result.stdout


def test_infer_reads_a_npy_input_without_labels(agent_config: Path, tmp_path: Path) -> None:
    features = load_digits_split().test_x[:5]
    np.save(tmp_path / "readings.npy", features)

    result = _byzedge(
        "agent", "infer", "--config", str(agent_config), "--input", str(tmp_path / "readings.npy")
    )

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report["predictions"]) == 5
    assert "accuracy" not in report


def test_infer_reports_a_missing_input_file_in_one_line(agent_config: Path, tmp_path: Path) -> None:
    result = _byzedge(
        "agent", "infer", "--config", str(agent_config), "--input", str(tmp_path / "none.npy")
    )

    assert result.returncode == 2
    assert result.stderr.startswith("byzedge agent: cannot read --input")
    assert result.stderr.count("\n") == 1


def test_infer_reports_input_of_the_wrong_width_in_one_line(
    agent_config: Path, tmp_path: Path
) -> None:
    readings = tmp_path / "readings.csv"
    readings.write_text("0.1,0.2,0.3\n")

    result = _byzedge("agent", "infer", "--config", str(agent_config), "--input", str(readings))

    assert result.returncode == 2
    assert "bad input" in result.stderr
    assert result.stderr.count("\n") == 1


def test_infer_before_any_model_exits_1_with_a_clear_message(
    trained_fleet: Path, tmp_path: Path
) -> None:
    config = _agent_toml(tmp_path / "agent.toml", trained_fleet, tmp_path / "empty-state")

    result = _byzedge("agent", "infer", "--config", str(config))

    assert result.returncode == 1
    assert result.stdout == ""
    assert "no global model" in result.stderr
    assert result.stderr.count("\n") == 1
