"""The coordinator and agents over the in-memory transport: the services' own logic.

Real agents (training on digits shards) and a real coordinator, connected through
:class:`daemon.transport.InMemoryBroker` instead of a broker: how rounds close, what a
refused device reports, without sockets. The same behaviours over a real mosquitto are in
``tests/integration/test_operator_fleet.py``.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np

from byzedge.coordinator.service import RoundSummary
from byzedge.daemon.store import AtomicStore
from byzedge.daemon.transport import InMemoryBroker
from byzedge.edge_agent.sensors import build_source
from byzedge.edge_agent.service import Agent
from byzedge.fleet_sim.fleet import FleetSpec, InProcessFleet
from byzedge.protocol import topics
from byzedge.protocol.signing import SigningKey


def build(
    tmp_path: Path, broker: InMemoryBroker, *, devices: int = 3, rounds: int = 3
) -> tuple[InProcessFleet, list[RoundSummary]]:
    summaries: list[RoundSummary] = []
    spec = FleetSpec(
        fleet="mem",
        broker_url="mqtt://unused:1",
        devices=devices,
        rounds=rounds,
        epochs=1,
        round_timeout_s=30.0,
        coordinator_overrides={"validation": "none"},
    )
    fleet = InProcessFleet(spec, tmp_path, on_round=summaries.append, transport=broker.connect)
    return fleet, summaries


def test_rounds_close_when_every_device_has_answered(tmp_path: Path) -> None:
    fleet, summaries = build(tmp_path, InMemoryBroker())

    assert fleet.run() == 0

    assert [s.accepted for s in summaries] == [3, 3, 3]
    assert all(s.closed_by == "all-answered" for s in summaries)


def test_a_device_whose_updates_are_refused_says_so_and_holds_no_round(tmp_path: Path) -> None:
    refused = topics.update_topic("mem", "dev-001")
    broker = InMemoryBroker(authorize=lambda _client, topic: topic != refused)
    fleet, summaries = build(tmp_path, broker)

    assert fleet.run() == 0

    agent = next(a for a in fleet.agents if a.config.device_id == "dev-001")
    assert agent.updates_refused == 3
    assert agent.last_refusal is not None
    assert agent.last_refusal["reason"] == "Not authorized"
    assert all(s.unavailable == ["dev-001"] for s in summaries)
    assert all(s.closed_by == "all-available" for s in summaries)
    assert all(s.duration_s < 10 for s in summaries)


def test_a_device_that_dies_does_not_hold_the_rounds_after(tmp_path: Path) -> None:
    fleet, summaries = build(tmp_path, InMemoryBroker(), rounds=1000)
    stop = threading.Event()
    # Statuses in the first seconds after the coordinator connects may be the broker's
    # backlog (coordinator.service): a will that fires later counts within seconds.
    quiet_after = time.monotonic() + 5.5
    killed_at: list[int] = []

    def kill_then_stop() -> None:
        while time.monotonic() < quiet_after:
            time.sleep(0.01)
        killed_at.append(len(summaries))
        fleet.agents[2].kill()  # its last will says offline
        while len(summaries) < killed_at[0] + 3:
            time.sleep(0.01)
        stop.set()

    killer = threading.Thread(target=kill_then_stop)
    killer.start()
    assert fleet.run(stop) == 0
    killer.join()

    after = summaries[killed_at[0] + 1 :]
    assert len(after) >= 2
    assert all(s.unavailable == ["dev-002"] for s in after)
    assert all(s.closed_by == "all-available" for s in after)
    assert all(s.accepted_devices == ["dev-000", "dev-001"] for s in after)
    assert all(s.duration_s < 5.0 for s in after)


def test_worker_momentum_survives_an_agent_restart(tmp_path: Path) -> None:
    """The momentum an agent kept is in its state file, and a restarted agent resumes it."""
    # Prepare
    spec = FleetSpec(
        fleet="mem",
        broker_url="mqtt://unused:1",
        devices=2,
        rounds=2,
        epochs=1,
        momentum1=0.5,
        round_timeout_s=30.0,
        coordinator_overrides={"validation": "none"},
    )
    fleet = InProcessFleet(spec, tmp_path, transport=InMemoryBroker().connect)
    assert fleet.run() == 0
    agent = fleet.agents[0]
    kept = agent._pipeline.momentum
    assert kept is not None
    # Execute
    restarted = Agent(
        agent.config,
        signing_key=SigningKey.load(agent.config.signing_key),
        coordinator_key=agent._coordinator_key,
        source=build_source(agent.config.data),
        transport=InMemoryBroker().connect,
    )
    # Assert
    saved = AtomicStore(agent.config.state_dir / "agent.state").load()
    assert saved is not None
    assert saved["momentum"] == kept.astype("<f4").tobytes()
    assert restarted._pipeline.momentum is not None
    np.testing.assert_array_equal(restarted._pipeline.momentum, kept)


def test_a_summary_line_cut_by_a_kill_is_written_at_restart(tmp_path: Path) -> None:
    broker = InMemoryBroker()
    fleet, _ = build(tmp_path, broker, rounds=2)
    assert fleet.run() == 0
    log = tmp_path / "coordinator" / "rounds.jsonl"
    lines = log.read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [1, 2]
    # What a SIGKILL between round 2's state save and its summary line leaves behind.
    log.write_text(lines[0] + "\n")

    restarted, _ = build(tmp_path, broker, rounds=2)
    assert restarted.run() == 0

    recovered = [json.loads(line) for line in log.read_text().splitlines()]
    assert [s["round"] for s in recovered] == [1, 2]
    assert recovered[1] | {"audit_head": None} == json.loads(lines[1]) | {"audit_head": None}
    audit = (tmp_path / "coordinator" / "audit.jsonl").read_text()
    assert audit.count('"round-summary-recovered"') == 1

    # Nothing is written twice on the next start.
    again, _ = build(tmp_path, broker, rounds=2)
    assert again.run() == 0
    assert len(log.read_text().splitlines()) == 2


def test_a_sampled_round_reports_the_reputations_of_its_devices_only(tmp_path: Path) -> None:
    summaries: list[RoundSummary] = []
    spec = FleetSpec(
        fleet="mem",
        broker_url="mqtt://unused:1",
        devices=6,
        rounds=4,
        epochs=1,
        round_timeout_s=30.0,
        coordinator_overrides={"validation": "none", "devices_per_round": 2},
    )
    fleet = InProcessFleet(
        spec, tmp_path, on_round=summaries.append, transport=InMemoryBroker().connect
    )
    assert fleet.run() == 0

    seen: set[str] = set()
    for summary in summaries:
        assert summary.accepted == 2
        # A million-device fleet must not put every device's figure in every summary.
        assert sorted(summary.reputations) == summary.accepted_devices
        seen.update(summary.reputations)
    assert len(seen) > 2  # different devices in different rounds
