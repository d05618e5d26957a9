"""The in-memory simulator and the MQTT fleet give the same run for the same seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from byzedge.coordinator.service import RoundSummary
from byzedge.fleet_sim.brokers import BrokerHandle
from byzedge.fleet_sim.fleet import FleetSpec, InProcessFleet, choose_byzantine
from byzedge.fleet_sim.scenario import Scenario
from byzedge.fleet_sim.simulator import Simulator

pytestmark = [pytest.mark.slow, pytest.mark.broker]


@pytest.mark.parametrize(("defense", "attack"), [("clipping-vr", "sign-flip"), ("mean", None)])
def test_in_memory_and_mqtt_transports_agree(
    tmp_path: Path, mosquitto_broker: BrokerHandle, defense: str, attack: str | None
) -> None:
    devices, rounds, seed, fraction = 6, 3, 4, 0.34
    byzantine = choose_byzantine(devices, fraction, seed) if attack else frozenset()
    summaries: list[RoundSummary] = []
    spec = FleetSpec(
        fleet=f"parity-{defense}",
        broker_url=mosquitto_broker.url,
        devices=devices,
        rounds=rounds,
        defense=defense,
        attack=attack,
        byzantine=byzantine,
        seed=seed,
        epochs=1,
        learning_rate=0.1,
        batch_size=16,
    )
    fleet = InProcessFleet(spec, tmp_path / "fleet", on_round=summaries.append)
    assert fleet.run() == 0

    simulator = Simulator(
        Scenario(
            devices=devices,
            rounds=rounds,
            defense=defense,
            attack=attack,
            byzantine_fraction=fraction if attack else 0.0,
            seed=seed,
            epochs=1,
            learning_rate=0.1,
            batch_size=16,
            device_reputation=defense != "mean",
        )
    )
    result = simulator.run()

    assert set(result.compromised) == set(byzantine)
    assert [s.validation_accuracy for s in summaries] == result.accuracies
    assert [sorted(s.flagged) for s in summaries] == [sorted(r.flagged) for r in result.rounds]
    np.testing.assert_allclose(simulator.params, fleet.coordinator.state.params, atol=1e-6)
