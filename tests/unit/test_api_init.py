"""``byzedge.init``: the simulator's keywords provision a real fleet's configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import byzedge
from byzedge.coordinator.config import load_coordinator_config
from byzedge.edge_agent.config import load_agent_config
from byzedge.models import read_template
from byzedge.provisioning import ProvisioningError, add_device


class Net(nn.Module):
    input_shape = (3, 16)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 4, kernel_size=3)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).relu().mean(dim=2))


def make_net() -> nn.Module:
    return Net()


def test_fleet_keywords_land_in_the_coordinator_and_agent_configs(tmp_path: Path) -> None:
    root = tmp_path / "fleet"
    report = byzedge.init(
        root,
        fleet="plant",
        devices=2,
        byzantine_defense="trimmed-mean",
        aggregation={"trim_fraction": 0.25},
        rounds=30,
        anomaly_threshold=2.5,
        momentum1=0.9,
        epochs=3,
        learning_rate=0.05,
        partition="dirichlet",
        alpha=0.3,
        seed=7,
    )

    assert report.devices == ["dev-000", "dev-001"]
    coordinator = load_coordinator_config(root / "coordinator" / "coordinator.toml")
    assert coordinator.byzantine_defense == "trimmed-mean"
    assert coordinator.aggregation_config.trim_fraction == 0.25
    assert coordinator.rounds == 30
    assert coordinator.anomaly_threshold == 2.5
    assert coordinator.seed == 7
    agent = load_agent_config(root / "agents" / "dev-001" / "agent.toml")
    assert agent.momentum1 == 0.9
    assert (agent.training.epochs, agent.training.learning_rate) == (3, 0.05)
    assert (agent.data.partition, agent.data.alpha, agent.data.seed) == ("dirichlet", 0.3, 7)
    assert (agent.data.num_partitions, agent.data.partition_index) == (2, 1)
    assert agent.seed == 7
    # A device added later gets the same settings (fleet.toml keeps them).
    add_device(root)
    added = load_agent_config(root / "agents" / "dev-002" / "agent.toml")
    assert added.momentum1 == 0.9
    assert added.data.partition == "dirichlet"


def test_a_factory_model_is_named_on_both_sides_and_its_template_exported(
    tmp_path: Path,
) -> None:
    reference = f"{__name__}:make_net"
    root = tmp_path / "fleet"
    byzedge.init(root, fleet="plant", devices=1, model=reference, loss="cross-entropy")

    coordinator = load_coordinator_config(root / "coordinator" / "coordinator.toml")
    assert coordinator.model == reference
    assert coordinator.model_template == root / "coordinator" / "model.onnx"
    template = read_template(coordinator.model_template.read_bytes(), name=reference)
    assert template.input_shape == (3, 16)
    agent = load_agent_config(root / "agents" / "dev-000" / "agent.toml")
    assert agent.model == reference
    assert agent.training.loss == "cross-entropy"


def test_a_simulation_only_keyword_is_a_type_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="simulation-only keyword 'attack'"):
        byzedge.init(tmp_path / "fleet", fleet="plant", devices=1, attack="sign-flip")
    assert not (tmp_path / "fleet").exists()


def test_an_unknown_keyword_is_a_type_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'round'"):
        byzedge.init(tmp_path / "fleet", fleet="plant", devices=1, round=3)


def test_a_model_object_is_refused_for_a_fleet(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="factory reference"):
        byzedge.init(tmp_path / "fleet", fleet="plant", devices=1, model=Net())


def test_a_value_the_configs_refuse_names_the_key_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ProvisioningError, match="anomaly_threshold"):
        byzedge.init(tmp_path / "fleet", fleet="plant", devices=1, anomaly_threshold=-1.0)
    with pytest.raises(ProvisioningError, match=r"agent training\.epochs"):
        byzedge.init(tmp_path / "fleet", fleet="plant", devices=1, epochs=0)
    assert not (tmp_path / "fleet").exists()
