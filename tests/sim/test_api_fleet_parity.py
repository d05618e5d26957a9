"""A user's model and arrays: ``byzedge.simulate`` and a fleet of real agents agree exactly.

The network is defined here and named by its factory reference, as an ``agent.toml``
names it; the arrays are made here. The fleet (real agents and coordinator over the
in-memory broker) deals the arrays as the simulator does, one ``.npz`` per device, and the
coordinator exports the model's template; the simulator trains ``per-device`` (the agents'
own ``train_local``), so after the same rounds under the same seed and attack the two
global models are the same bits. The fleet runs once over the in-memory broker and once
over a real mosquitto (the session's broker, each agent its own MQTT connection).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import byzedge
from byzedge.coordinator.service import RoundSummary
from byzedge.daemon.transport import InMemoryBroker, TransportFactory
from byzedge.fleet_sim.brokers import BrokerHandle
from byzedge.fleet_sim.fleet import FleetSpec, InProcessFleet, choose_byzantine
from byzedge.models.datasets import DigitsSplit

DEVICES, ROUNDS, SEED, FRACTION = 5, 4, 3, 0.2


class WindowNet(nn.Module):
    """Conv1d over 3 channels x 32 steps -> ReLU -> mean over time -> 3 classes."""

    input_shape = (3, 32)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 6, kernel_size=5, padding=2)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).relu().mean(dim=2))


def make_window_net() -> nn.Module:
    return WindowNet()


REFERENCE = f"{__name__}:make_window_net"


def windows(seed: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=m)
    x = rng.standard_normal((m, 3, 32)).astype(np.float32) * 0.5
    x[np.arange(m), labels, :] += 1.0
    return x, labels.astype(np.int64)


@pytest.fixture(params=["in-memory", pytest.param("mosquitto", marks=pytest.mark.broker)])
def transport(
    request: pytest.FixtureRequest,
) -> tuple[str, TransportFactory | None]:
    """``(broker url, transport)``: the in-memory broker, or MQTT to a real mosquitto."""
    if request.param == "in-memory":
        return "mqtt://unused:1", InMemoryBroker().connect
    broker: BrokerHandle = request.getfixturevalue("mosquitto_broker")
    return broker.url, None


def test_simulate_and_a_fleet_of_agents_end_with_the_same_parameters(
    tmp_path: Path, transport: tuple[str, TransportFactory | None]
) -> None:
    broker_url, connect = transport
    train, test = windows(0, 160), windows(1, 80)
    training = {"epochs": 3, "learning_rate": 0.3, "batch_size": 16}
    result = byzedge.simulate(
        model=REFERENCE,
        data=train,
        test_data=test,
        devices=DEVICES,
        rounds=ROUNDS,
        byzantine_defense="clipping-vr",
        attack="sign-flip",
        byzantine_fraction=FRACTION,
        seed=SEED,
        trainer="per-device",
        **training,
    )
    summaries: list[RoundSummary] = []
    fleet = InProcessFleet(
        FleetSpec(
            fleet=f"api-parity-{tmp_path.name}",
            broker_url=broker_url,
            devices=DEVICES,
            rounds=ROUNDS,
            defense="clipping-vr",
            attack="sign-flip",
            byzantine=choose_byzantine(DEVICES, FRACTION, SEED),
            seed=SEED,
            model=REFERENCE,
            **training,
        ),
        tmp_path / "fleet",
        on_round=summaries.append,
        transport=connect,
        data=DigitsSplit(*train, *test),
    )

    assert fleet.run() == 0

    assert set(result.compromised) == set(fleet.compromised)
    assert [s.accepted for s in summaries] == [r.accepted for r in result.rounds]
    assert [sorted(s.flagged) for s in summaries] == [sorted(r.flagged) for r in result.rounds]
    assert [s.validation_accuracy for s in summaries] == result.accuracies
    np.testing.assert_array_equal(result.params, fleet.coordinator.state.params)
    assert result.final_accuracy is not None
    assert result.final_accuracy > 0.6  # chance is 1/3; four rounds of five devices
