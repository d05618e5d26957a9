"""A user's model over the real agent and coordinator code, on the in-memory broker.

Agents train the 1-D convolutional network of ``test_models_custom`` (named by its factory
reference, as in agent.toml) on windows of 3 channels x 32 steps that this test makes; the
coordinator names the same reference with the template ``byzedge model export`` wrote,
and evaluates each round's model with onnxruntime.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from test_models_custom import REFERENCE, make_long_window_net

from byzedge.cli import main
from byzedge.coordinator.config import CoordinatorConfig
from byzedge.coordinator.devices import DeviceRegistry
from byzedge.coordinator.service import Coordinator, RoundSummary
from byzedge.daemon.mqtt import MqttSettings
from byzedge.daemon.transport import InMemoryBroker
from byzedge.edge_agent.config import AgentConfig
from byzedge.edge_agent.model_store import ModelStore
from byzedge.edge_agent.seams import LocalData
from byzedge.edge_agent.service import Agent
from byzedge.edge_agent.telemetry import TelemetrySnapshot
from byzedge.models.datasets import DigitsSplit
from byzedge.models.torch_export import spec_from_factory
from byzedge.protocol.signing import SigningKey

DEVICES = 3


def windows(rng: np.random.Generator, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows whose class is the channel with the largest offset (3 of 4 classes)."""
    labels = rng.integers(0, 3, size=m)
    x = rng.standard_normal((m, 3, 32)).astype(np.float32) * 0.5
    x[np.arange(m), labels, :] += 1.0
    return x, labels.astype(np.int64)


class WindowSource:
    """A device's sensor: the same windows every round, flattened to rows."""

    def __init__(self, seed: int) -> None:
        x, y = windows(np.random.default_rng(seed), 96)
        self._data = LocalData(features=x.reshape(len(x), -1), labels=y)

    def read(self, round_number: int) -> LocalData:
        return self._data


def steady() -> TelemetrySnapshot:
    return TelemetrySnapshot(
        cpu_percent=0.0,
        memory_percent=0.0,
        memory_available_mb=1024.0,
        temperature_c=None,
        battery_percent=None,
    )


def build(
    tmp_path: Path, template: Path, *, rounds: int, timeout_s: float, validate: bool = True
) -> tuple[list[Agent], Coordinator, list[RoundSummary]]:
    broker = InMemoryBroker()
    coordinator_key = SigningKey.generate()
    keys = tmp_path / "keys"
    coordinator_key.save(keys / "coordinator.key")
    mqtt = MqttSettings(url="mqtt://unused:1", reconnect_min_s=0.2, reconnect_max_s=5.0)
    agents, registry = [], {}
    for index in range(DEVICES):
        device = f"dev-{index:03d}"
        key = SigningKey.generate()
        key.save(keys / f"{device}.key")
        registry[device] = key.verify_key
        config = AgentConfig(
            fleet="custom",
            device_id=device,
            signing_key=keys / f"{device}.key",
            coordinator_key=keys / "coordinator.pub",
            state_dir=tmp_path / "agents" / device,
            mqtt=mqtt,
            model=REFERENCE,
            training={"epochs": 2, "learning_rate": 0.1, "isolation": "in-process"},
            seed=index,
        )
        agents.append(
            Agent(
                config,
                signing_key=key,
                coordinator_key=coordinator_key.verify_key,
                source=WindowSource(seed=index),
                telemetry=steady,
                transport=broker.connect,
            )
        )
    test_x, test_y = windows(np.random.default_rng(99), 200)
    config = CoordinatorConfig.model_validate(
        {
            "fleet": "custom",
            "mqtt": mqtt,
            "signing_key": keys / "coordinator.key",
            "devices_dir": tmp_path / "devices",
            "state_dir": tmp_path / "coordinator",
            "model": REFERENCE,
            "model_template": template,
            "rounds": rounds,
            "round_timeout_s": timeout_s,
            "round_interval_s": 0.0,
            "validation": "none",
        }
    )
    summaries: list[RoundSummary] = []
    coordinator = Coordinator(
        config,
        signing_key=coordinator_key,
        devices=DeviceRegistry(registry),
        on_round=summaries.append,
        transport=broker.connect,
        validation=DigitsSplit(test_x, test_y, test_x, test_y) if validate else None,
    )
    return agents, coordinator, summaries


def run(agents: list[Agent], coordinator: Coordinator) -> None:
    stop = threading.Event()
    threads = [threading.Thread(target=a.run, args=(stop,), daemon=True) for a in agents]
    for thread in threads:
        thread.start()
    for agent in agents:
        assert agent.connected.wait(30)
    try:
        assert coordinator.run() == 0
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=15)


def test_agents_train_a_users_model_and_the_coordinator_evaluates_it(tmp_path: Path) -> None:
    template = tmp_path / "window.onnx"
    assert main(["model", "export", REFERENCE, "--out", str(template)]) == 0
    agents, coordinator, summaries = build(tmp_path, template, rounds=4, timeout_s=60.0)

    run(agents, coordinator)

    assert [s.accepted for s in summaries] == [DEVICES] * 4
    accuracies = [s.validation_accuracy for s in summaries]
    assert all(a is not None for a in accuracies)
    assert accuracies[-1] is not None
    assert accuracies[-1] > 0.9  # chance is 1/3
    assert sum(a.refused_models for a in agents) == 0
    stored = ModelStore(agents[0].config.state_dir).classifier()  # what `agent infer` serves
    assert stored.input_shape == (3, 32)


def test_a_coordinator_model_of_another_input_shape_is_refused_at_the_first_manifest(
    tmp_path: Path,
) -> None:
    # The coordinator's template came from code that drifted: 64-step windows, the same
    # parameter count (the network averages over time), so only the layout tells.
    drifted = spec_from_factory(make_long_window_net, name=REFERENCE)
    assert drifted.template is not None
    template = tmp_path / "drifted.onnx"
    template.write_bytes(drifted.template)
    agents, coordinator, summaries = build(
        tmp_path, template, rounds=1, timeout_s=1.5, validate=False
    )

    run(agents, coordinator)

    assert summaries[0].accepted == 0
    for agent in agents:
        assert agent.refused_models >= 1
        assert agent.last_model_refusal == (
            "model layout differs: input shape coordinator (3, 64), device (3, 32)"
        )
