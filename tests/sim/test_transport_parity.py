"""The in-memory simulator and the fleet of real agents give the same run for the same seed.

Both run the agents' update pipeline (worker momentum included) and the coordinator's round
engine (cohort, intake, server step with its streaming path and fallback chain); only the
transport differs: function calls in the simulator, MQTT (or the in-memory broker) for the
fleet. The simulator trains ``per-device`` (the agents' own ``train_local``), so the
parameters agree exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from byzedge.coordinator.service import RoundSummary
from byzedge.daemon.transport import InMemoryBroker, TransportFactory
from byzedge.fleet_sim.brokers import BrokerHandle
from byzedge.fleet_sim.fleet import FleetSpec, InProcessFleet, choose_byzantine
from byzedge.fleet_sim.scenario import Scenario
from byzedge.fleet_sim.simulator import SimulationResult, Simulator

pytestmark = pytest.mark.slow

DEVICES, ROUNDS, SEED, FRACTION = 6, 3, 4, 0.34


@dataclass
class _Runs:
    summaries: list[RoundSummary]
    fleet: InProcessFleet
    simulator: Simulator
    result: SimulationResult


def _run_both(
    workdir: Path,
    broker_url: str,
    *,
    defense: str,
    attack: str | None,
    momentum1: float = 0.0,
    anomaly_detection: bool = True,
    transport: TransportFactory | None = None,
) -> _Runs:
    byzantine = choose_byzantine(DEVICES, FRACTION, SEED) if attack else frozenset()
    summaries: list[RoundSummary] = []
    spec = FleetSpec(
        fleet=f"parity-{defense}",
        broker_url=broker_url,
        devices=DEVICES,
        rounds=ROUNDS,
        defense=defense,
        attack=attack,
        byzantine=byzantine,
        momentum1=momentum1,
        seed=SEED,
        epochs=1,
        learning_rate=0.1,
        batch_size=16,
        coordinator_overrides={"anomaly_detection": anomaly_detection},
    )
    fleet = InProcessFleet(spec, workdir, on_round=summaries.append, transport=transport)
    assert fleet.run() == 0
    simulator = Simulator(
        Scenario(
            devices=DEVICES,
            rounds=ROUNDS,
            defense=defense,
            attack=attack,
            byzantine_fraction=FRACTION if attack else 0.0,
            momentum1=momentum1,
            seed=SEED,
            epochs=1,
            learning_rate=0.1,
            batch_size=16,
            anomaly_detection=anomaly_detection,
            device_reputation=defense != "mean",
            trainer="per-device",
        )
    )
    result = simulator.run()
    assert set(result.compromised) == set(byzantine)
    return _Runs(summaries, fleet, simulator, result)


def _assert_same_run(runs: _Runs) -> None:
    assert [s.validation_accuracy for s in runs.summaries] == runs.result.accuracies
    assert [sorted(s.flagged) for s in runs.summaries] == [
        sorted(r.flagged) for r in runs.result.rounds
    ]
    assert [s.fallback for s in runs.summaries] == [r.fallback for r in runs.result.rounds]
    np.testing.assert_array_equal(runs.simulator.params, runs.fleet.coordinator.state.params)


@pytest.mark.broker
@pytest.mark.parametrize(
    ("defense", "attack", "momentum1"),
    [("clipping-vr", "sign-flip", 0.0), ("mean", None, 0.0), ("clipping-vr", "sign-flip", 0.9)],
)
def test_in_memory_and_mqtt_transports_agree(
    tmp_path: Path,
    mosquitto_broker: BrokerHandle,
    defense: str,
    attack: str | None,
    momentum1: float,
) -> None:
    """A simulated run and the same run over a real mosquitto end with identical parameters."""
    runs = _run_both(
        tmp_path / "fleet",
        mosquitto_broker.url,
        defense=defense,
        attack=attack,
        momentum1=momentum1,
    )
    _assert_same_run(runs)


@pytest.mark.parametrize("anomaly_detection", [True, False])
def test_simulator_and_in_memory_broker_fleet_agree_with_momentum(
    tmp_path: Path, anomaly_detection: bool
) -> None:
    """With worker momentum, in batch or streamed (scoring off), the two runs are identical."""
    runs = _run_both(
        tmp_path / "fleet",
        "mqtt://unused:1",
        defense="clipping-vr",
        attack="sign-flip",
        momentum1=0.9,
        anomaly_detection=anomaly_detection,
        transport=InMemoryBroker().connect,
    )
    _assert_same_run(runs)
    assert any(agent._pipeline.momentum is not None for agent in runs.fleet.agents)
