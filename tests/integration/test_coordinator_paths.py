"""The coordinator's less common aggregation paths, over a real broker: fallback, streaming."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from byzedge.coordinator.service import RoundSummary
from byzedge.fleet_sim.brokers import BrokerHandle
from byzedge.fleet_sim.fleet import FleetSpec, InProcessFleet

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


def test_a_reload_revokes_a_removed_device_before_the_next_round(
    mosquitto_broker: BrokerHandle, tmp_path: Path
) -> None:
    # What SIGHUP does to `byzedge coordinator run`: the operator deletes a device's key
    # from devices_dir and reloads; from the next round on its updates are refused.
    summaries: list[RoundSummary] = []
    reload = threading.Event()
    spec = FleetSpec(
        fleet="paths-reload",
        broker_url=mosquitto_broker.url,
        devices=4,
        rounds=3,
        defense="mean",
        epochs=1,
        round_timeout_s=20,
        coordinator_overrides={"audit_logging": True},
    )

    def on_round(summary: RoundSummary) -> None:
        summaries.append(summary)
        if summary.round == 1:
            (fleet.coordinator_config.devices_dir / f"{revoked}.pub").unlink()
            reload.set()

    fleet = InProcessFleet(spec, tmp_path, on_round=on_round)
    revoked = fleet.agents[-1].config.device_id
    assert fleet.run(reload=reload) == 0

    assert [s.round for s in summaries] == [1, 2, 3]
    assert revoked in summaries[0].accepted_devices
    for summary in summaries[1:]:
        assert summary.accepted == 3
        assert revoked not in summary.accepted_devices
    assert summaries[-1].rejected_total.get("unknown-device", 0) >= 1
    audit = (fleet.coordinator_config.state_dir / "audit.jsonl").read_text().splitlines()
    reloads = [json.loads(line) for line in audit if '"enrolment-reloaded"' in line]
    assert [event["data"]["removed"] for event in reloads] == [[revoked]]


def test_a_reload_without_the_devices_folder_keeps_the_enrolment(
    mosquitto_broker: BrokerHandle, tmp_path: Path
) -> None:
    spec = FleetSpec(fleet="paths-reload-missing", broker_url=mosquitto_broker.url, devices=3)
    fleet = InProcessFleet(spec, tmp_path)
    devices_dir = fleet.coordinator_config.devices_dir
    devices_dir.rename(tmp_path / "moved-away")

    assert fleet.coordinator.reload_enrolment() == ([], [])
    assert len(list(fleet.coordinator._ingest.devices)) == 3


def test_a_requested_reputation_reset_is_applied_and_audited(
    mosquitto_broker: BrokerHandle, tmp_path: Path
) -> None:
    from byzedge.coordinator.requests import request_reputation_reset  # noqa: PLC0415

    spec = FleetSpec(
        fleet="paths-reset", broker_url=mosquitto_broker.url, devices=3, rounds=2, epochs=1
    )
    fleet = InProcessFleet(spec, tmp_path)
    state_dir = fleet.coordinator_config.state_dir
    request_reputation_reset(state_dir, "dev-001")

    fleet.run()

    records = [json.loads(line) for line in (state_dir / "audit.jsonl").read_text().splitlines()]
    resets = [r for r in records if r["event"] == "reputation-reset"]
    assert [r["data"]["device"] for r in resets] == ["dev-001"]
    assert not (state_dir / "requests" / "dev-001.reputation-reset").exists()
