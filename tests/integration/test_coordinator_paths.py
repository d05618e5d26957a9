"""The coordinator's less common aggregation paths, over a real broker: fallback, streaming."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from coordinator.service import RoundSummary
from fleet_sim.brokers import BrokerHandle
from fleet_sim.fleet import FleetSpec, InProcessFleet

pytestmark = pytest.mark.broker


def _run(
    broker: BrokerHandle, workdir: Path, defense: str, overrides: dict[str, Any]
) -> list[RoundSummary]:
    summaries: list[RoundSummary] = []
    spec = FleetSpec(
        fleet=f"paths-{defense}",
        broker_url=broker.url,
        devices=4,
        rounds=3,
        defense=defense,
        epochs=2,
        round_timeout_s=20,
        coordinator_overrides=overrides,
    )
    InProcessFleet(spec, workdir, on_round=summaries.append).run()
    return summaries


def test_breakdown_of_the_rule_falls_back_and_says_so(
    mosquitto_broker: BrokerHandle, tmp_path: Path
) -> None:
    # Bulyan needs n >= 4f + 3: with 4 updates and f = 1 it cannot aggregate.
    summaries = _run(mosquitto_broker, tmp_path, "bulyan", {"max_byzantine_fraction": 0.25})

    assert [s.round for s in summaries] == [1, 2, 3]
    assert all(s.fallback == "coordinate-median" for s in summaries)
    assert all(s.accepted == 4 for s in summaries)
    accuracy = [s.validation_accuracy for s in summaries]
    assert accuracy[-1] is not None
    assert accuracy[-1] > 0.3


def test_streaming_path_trains_when_anomaly_detection_is_off(
    mosquitto_broker: BrokerHandle, tmp_path: Path
) -> None:
    summaries = _run(mosquitto_broker, tmp_path, "mean", {"anomaly_detection": False})

    assert all(s.fallback is None and s.flagged == [] for s in summaries)
    accuracy = [s.validation_accuracy for s in summaries]
    assert accuracy[-1] is not None
    assert accuracy[-1] > 0.3
