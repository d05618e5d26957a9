"""Bad local data skips the round with a reason in the device's status; the agent goes on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from byzedge.coordinator.service import RoundSummary
from byzedge.daemon.transport import InMemoryBroker
from byzedge.edge_agent.seams import LocalData
from byzedge.edge_agent.sensors import build_source
from byzedge.edge_agent.service import Agent
from byzedge.fleet_sim.fleet import FleetSpec, InProcessFleet
from byzedge.protocol import topics
from byzedge.protocol.signing import SigningKey, VerifyKey


class Flaky:
    """Round 1: every reading NaN; round 2: windows of the wrong shape; then the real shard."""

    def __init__(self, real: object) -> None:
        self.real = real

    def read(self, round_number: int) -> LocalData:
        good = self.real.read(round_number)  # type: ignore[attr-defined]
        if round_number == 1:
            return LocalData(np.full_like(good.features, np.nan), good.labels)
        if round_number == 2:
            return LocalData(good.features[:, :10], good.labels)
        return good  # type: ignore[no-any-return]


def test_bad_rounds_are_skipped_with_their_reason_and_the_next_round_trains(
    tmp_path: Path,
) -> None:
    broker = InMemoryBroker()
    summaries: list[RoundSummary] = []
    spec = FleetSpec(
        fleet="bad",
        broker_url="mqtt://unused:1",
        devices=2,
        rounds=3,
        epochs=1,
        round_timeout_s=60.0,  # a skipping device answers with its status: no waiting
        coordinator_overrides={"validation": "none"},
    )
    fleet = InProcessFleet(spec, tmp_path, on_round=summaries.append, transport=broker.connect)
    config = fleet.agents[1].config
    fleet.agents[1] = Agent(
        config,
        signing_key=SigningKey.load(config.signing_key),
        coordinator_key=VerifyKey.load(config.coordinator_key),
        source=Flaky(build_source(config.data)),
        telemetry=fleet.agents[0]._telemetry,
        transport=broker.connect,
    )

    assert fleet.run() == 0

    status_topic = topics.device_status_topic("bad", "dev-001")
    statuses = [json.loads(p) for t, p in broker.published if t == status_topic and p]
    skipped = {s["round"]: s["reason"] for s in statuses if s.get("state") == "skipped"}
    assert "NaN" in skipped[1]
    assert "features must have shape (m, 64), got (" in skipped[2]
    assert [s.accepted_devices for s in summaries] == [
        ["dev-000"],
        ["dev-000"],
        ["dev-000", "dev-001"],
    ]
