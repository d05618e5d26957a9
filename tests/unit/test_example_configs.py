"""The example configs in deploy/examples/ load with the real loaders and mean what they say."""

from __future__ import annotations

from pathlib import Path

from byzedge.coordinator.config import load_coordinator_config
from byzedge.edge_agent.config import load_agent_config
from byzedge.faults.plan import load_fault_plan
from byzedge.fleet_sim.scenario import load_scenario

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"


def test_example_coordinator_config_validates() -> None:
    config = load_coordinator_config(EXAMPLES / "coordinator.toml")

    assert config.fleet == "example"
    assert config.mqtt.url == "mqtt://127.0.0.1:1883"
    assert config.byzantine_defense == "clipping-vr"


def test_example_coordinator_config_resolves_paths_against_its_folder() -> None:
    config = load_coordinator_config(EXAMPLES / "coordinator.toml")

    assert config.signing_key == EXAMPLES / "coordinator.key"
    assert config.devices_dir == EXAMPLES.parent / "devices"


def test_example_state_dirs_are_systemds_state_directories() -> None:
    # Not under the config's folder, which ProtectSystem=strict makes read-only.
    assert load_coordinator_config(EXAMPLES / "coordinator.toml").state_dir == Path(
        "/var/lib/byzedge-coordinator"
    )
    assert load_agent_config(EXAMPLES / "agent.toml").state_dir == Path("/var/lib/byzedge-agent")


def test_example_agent_config_validates() -> None:
    config = load_agent_config(EXAMPLES / "agent.toml")

    assert config.fleet == "example"
    assert config.device_id == "dev-000"
    assert config.mqtt.url == "mqtt://127.0.0.1:1883"
    assert config.data.partition_index < config.data.num_partitions


def test_example_agent_config_resolves_paths_against_its_folder() -> None:
    config = load_agent_config(EXAMPLES / "agent.toml")

    assert config.signing_key == EXAMPLES / "device.key"
    assert config.coordinator_key == EXAMPLES / "coordinator.pub"


def test_example_agent_and_coordinator_agree_on_fleet_and_model() -> None:
    coordinator = load_coordinator_config(EXAMPLES / "coordinator.toml")
    agent = load_agent_config(EXAMPLES / "agent.toml")

    assert (agent.fleet, agent.model) == (coordinator.fleet, coordinator.model)


def test_example_fault_plan_compromises_a_targeted_device() -> None:
    injector = load_fault_plan(EXAMPLES / "fault-plan.toml", "dev-003")

    assert injector.is_compromised
    assert injector.names == ("sign-flip",)


def test_example_fault_plan_stacks_sensor_faults_in_file_order() -> None:
    injector = load_fault_plan(EXAMPLES / "fault-plan.toml", "dev-007")

    assert injector.names == ("sensor-noise", "dropout")


def test_example_fault_plan_leaves_an_untargeted_device_unchanged() -> None:
    injector = load_fault_plan(EXAMPLES / "fault-plan.toml", "dev-000")

    assert not injector.is_compromised


def test_example_scenario_validates() -> None:
    scenario = load_scenario(EXAMPLES / "scenario.toml")

    assert scenario.attack == "alie"
    assert scenario.defense == "clipping-vr"
    assert scenario.devices == 25
