"""An in-process fleet: one coordinator and N real agents, each with its own MQTT connection.

Everything is real except the hardware: Ed25519 keys generated per device, configs validated
by the same schemas as ``agent.toml`` / ``coordinator.toml``, a real broker, real training.
Agents run as threads (torch limited to one thread each); compromised agents are ordinary
agents whose sensor source and update pipeline the fault injector wrapped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from byzedge.coordinator.config import CoordinatorConfig
from byzedge.coordinator.devices import DeviceRegistry
from byzedge.coordinator.service import Coordinator, RoundSummary
from byzedge.daemon.mqtt import MqttSettings
from byzedge.daemon.transport import TransportFactory
from byzedge.edge_agent.config import AgentConfig
from byzedge.edge_agent.sensors import build_source
from byzedge.edge_agent.service import Agent
from byzedge.edge_agent.telemetry import TelemetrySnapshot
from byzedge.faults import FaultInjector
from byzedge.fleet_sim.simulator import shard_indices
from byzedge.models import get_model_spec, is_factory_reference
from byzedge.models.datasets import DigitsSplit
from byzedge.protocol.signing import SigningKey, VerifyKey

__all__ = ["FleetSpec", "InProcessFleet", "choose_byzantine"]

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FleetSpec:
    """What to build."""

    fleet: str
    broker_url: str
    devices: int = 20
    rounds: int = 20
    defense: str = "clipping-vr"
    attack: str | None = None
    byzantine: frozenset[str] = frozenset()
    compression: str = "dense"
    sparsity: float = 0.1
    momentum1: float = 0.0
    """Every agent's worker momentum (``AgentConfig.momentum1``; 0 is off)."""
    seed: int = 0
    model: str = "mlp"
    dataset: str = "digits"  # a bundled dataset (models.datasets.DATASETS) the agents shard
    partition: str = "iid"
    epochs: int = 1
    learning_rate: float = 0.1
    batch_size: int = 16
    loss: Literal["cross-entropy", "mse"] = "cross-entropy"
    """The task (agents' ``[training]`` loss and the coordinator's metric)."""
    round_timeout_s: float = 15.0
    mqtt_protocol: Literal["auto", "5", "3.1.1"] = "auto"
    coordinator_overrides: dict[str, Any] = field(default_factory=dict)


def device_ids(count: int) -> list[str]:
    """The demo's device ids: ``dev-000`` ... ."""
    return [f"dev-{index:03d}" for index in range(count)]


def choose_byzantine(count: int, fraction: float, seed: int) -> frozenset[str]:
    """Pick ``floor(fraction * count)`` compromised devices, reproducibly."""
    if not 0.0 <= fraction < 1.0:
        msg = f"byzantine fraction must be in [0, 1), got {fraction!r}"
        raise ValueError(msg)
    chosen = np.random.default_rng([seed, 7]).choice(
        count, size=int(fraction * count), replace=False
    )
    ids = device_ids(count)
    return frozenset(ids[i] for i in chosen)


def _steady_telemetry() -> TelemetrySnapshot:
    # All simulated devices share one host: its load says nothing about a device.
    return TelemetrySnapshot(
        cpu_percent=0.0,
        memory_percent=0.0,
        memory_available_mb=1024.0,
        temperature_c=None,
        battery_percent=None,
    )


class InProcessFleet:
    """Builds keys, configs, agents and the coordinator under ``workdir``.

    Parameters
    ----------
    spec:
        The fleet to build.
    workdir:
        Keys, state folders and logs go here.
    on_round:
        Called with each round summary (progress).
    transport:
        Builds every connection; MQTT to ``spec.broker_url`` by default (unit tests pass
        an :class:`~daemon.transport.InMemoryBroker`'s ``connect``).
    data:
        A user's arrays instead of the bundled ``spec.dataset``: the training half is
        dealt as the simulator deals it (:func:`~byzedge.fleet_sim.simulator.shard_indices`)
        and each device reads its shard from its own ``.npz`` (``source = "npz"``); the
        test half is the coordinator's validation set.

    A ``spec.model`` naming a factory reference is exported once into
    ``workdir/model.onnx``, the coordinator's ``model_template``.
    """

    def __init__(
        self,
        spec: FleetSpec,
        workdir: Path,
        on_round: Callable[[RoundSummary], None] | None = None,
        transport: TransportFactory | None = None,
        data: DigitsSplit | None = None,
    ) -> None:
        self.spec = spec
        self.workdir = workdir
        keys_dir = workdir / "keys"
        devices_dir = workdir / "devices"
        devices_dir.mkdir(parents=True, exist_ok=True)
        coordinator_key = SigningKey.generate()
        coordinator_key.save(keys_dir / "coordinator.key")
        mqtt = MqttSettings(
            url=spec.broker_url,
            protocol=spec.mqtt_protocol,
            reconnect_min_s=0.2,
            reconnect_max_s=5.0,
        )
        self.agents: list[Agent] = []
        self.compromised: dict[str, FaultInjector] = {}
        registry: dict[str, VerifyKey] = {}
        ids = device_ids(spec.devices)
        shards = self._write_shards(data, ids) if data is not None else None
        for index, device in enumerate(ids):
            key = SigningKey.generate()
            key.save(keys_dir / f"{device}.key")
            (devices_dir / f"{device}.pub").write_bytes(key.verify_key.to_pem())
            registry[device] = key.verify_key
            config = AgentConfig(
                fleet=spec.fleet,
                device_id=device,
                signing_key=keys_dir / f"{device}.key",
                coordinator_key=keys_dir / "coordinator.pub",
                state_dir=workdir / "agents" / device,
                mqtt=mqtt,
                model=spec.model,
                data=(
                    {"source": "npz", "path": shards[index]}
                    if shards is not None
                    else {
                        "source": spec.dataset,
                        "partition": spec.partition,
                        "num_partitions": spec.devices,
                        "partition_index": index,
                        "seed": spec.seed,
                    }
                ),
                training={
                    "epochs": spec.epochs,
                    "learning_rate": spec.learning_rate,
                    "batch_size": spec.batch_size,
                    "loss": spec.loss,
                    # Many agents share this process and its torch: no worker per round.
                    "isolation": "in-process",
                },
                compression=spec.compression,
                sparsity=spec.sparsity,
                momentum1=spec.momentum1,
                seed=spec.seed,
            )
            injector = FaultInjector.from_names(
                attack=spec.attack if device in spec.byzantine else None,
                seed=spec.seed * 1_000 + index,
            )
            if injector.is_compromised:
                self.compromised[device] = injector
            self.agents.append(
                Agent(
                    config,
                    signing_key=key,
                    coordinator_key=coordinator_key.verify_key,
                    source=injector.wrap_source(build_source(config.data)),
                    stages=injector.update_stages(),
                    wire_stages=injector.wire_stages(),
                    telemetry=_steady_telemetry,
                    transport=transport,
                )
            )
        self.coordinator_config = CoordinatorConfig.model_validate(
            {
                "fleet": spec.fleet,
                "mqtt": mqtt,
                "signing_key": keys_dir / "coordinator.key",
                "devices_dir": devices_dir,
                "state_dir": workdir / "coordinator",
                "model": spec.model,
                **self._model_template(),
                "loss": spec.loss,
                "seed": spec.seed,
                "rounds": spec.rounds,
                "round_timeout_s": spec.round_timeout_s,
                # In-process fleets (demo, tests) share one machine's cores on purpose.
                "round_interval_s": 0.0,
                "byzantine_defense": spec.defense,
                "device_reputation": spec.defense != "mean",
                **spec.coordinator_overrides,
            }
        )
        self.coordinator = Coordinator(
            self.coordinator_config,
            signing_key=coordinator_key,
            devices=DeviceRegistry(registry),
            on_round=on_round,
            transport=transport,
            validation=data,
        )
        self._stop_agents = threading.Event()
        self._threads: list[threading.Thread] = []

    def _write_shards(self, data: DigitsSplit, ids: Sequence[str]) -> list[Path]:
        """Write each device's shard of ``data``'s training half; return the files."""
        spec = self.spec
        folder = self.workdir / "data"
        folder.mkdir(parents=True, exist_ok=True)
        shards = shard_indices(data.train_y, spec.devices, spec.partition, seed=spec.seed)
        paths = []
        for device, shard in zip(ids, shards, strict=True):
            path = folder / f"{device}.npz"
            np.savez(path, features=data.train_x[shard], labels=data.train_y[shard])
            paths.append(path)
        return paths

    def _model_template(self) -> dict[str, Path]:
        """``model_template`` for a factory reference (exported here), else nothing."""
        if not is_factory_reference(self.spec.model):
            return {}
        template = get_model_spec(self.spec.model).template
        assert template is not None  # noqa: S101 - a factory's spec always carries one
        path = self.workdir / "model.onnx"
        path.write_bytes(template)
        return {"model_template": path}

    def start_agents(self, wait_s: float = 30.0) -> None:
        """Start every agent and wait until all are connected."""
        for agent in self.agents:
            thread = threading.Thread(
                target=agent.run,
                args=(self._stop_agents,),
                name=f"agent-{agent.config.device_id}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        for agent in self.agents:
            if not agent.connected.wait(wait_s):
                msg = f"agent {agent.config.device_id} did not connect within {wait_s} s"
                raise TimeoutError(msg)

    def run(
        self, stop: threading.Event | None = None, reload: threading.Event | None = None
    ) -> int:
        """Start the agents, run the coordinator to completion, stop the agents.

        ``stop`` and ``reload`` are the coordinator's (:meth:`Coordinator.run`).
        """
        try:
            self.start_agents()
            return self.coordinator.run(stop, reload)
        finally:
            self.stop_agents()

    def stop_agents(self) -> None:
        """Stop every agent thread."""
        self._stop_agents.set()
        for thread in self._threads:
            thread.join(timeout=15)

    @property
    def refused_models(self) -> int:
        """Global models refused by agents (bad signature, rollback...)."""
        return sum(agent.refused_models for agent in self.agents)

    def honest_ids(self) -> Sequence[str]:
        """Devices without injected faults."""
        return [
            a.config.device_id for a in self.agents if a.config.device_id not in self.compromised
        ]
