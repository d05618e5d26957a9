"""What an operator deploys, run as they run it: ``byzedge init``'s mTLS + ACL fleet.

Every daemon is a separate process started from the configuration ``byzedge init`` wrote,
against the mosquitto started from ``init``'s own ``mosquitto.conf`` (mutual TLS, the ACL,
persistence). The events an operator lives through are tested as events: hundreds of
rounds without a dropped connection, broker restarts (clean and SIGKILL), a coordinator
SIGKILLed mid-round, a device that goes offline, and a device whose certificate the ACL
refuses.

The coordinator's round pause is set to 0 (``round_interval_s``) so hundreds of rounds
fit in a test; everything else is the generated configuration.
"""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Iterator

import pytest
from provisioned import Fleet, provisioned_fleet

from byzedge.cli import main
from byzedge.coordinator.journal import read_journal

pytestmark = [pytest.mark.broker, pytest.mark.slow]

DEVICES = ("dev-000", "dev-001", "dev-002", "dev-003", "dev-004")
# What a connection problem looks like in our logs and in mosquitto's.
CLIENT_DROP_MARKERS = ("connection to mqtts://", "disconnected from", "cannot reach")
BROKER_DROP_MARKERS = ("Protocol error", "bad record mac", "internal error", "Socket error")


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    with provisioned_fleet(devices=len(DEVICES)) as made:
        made.set_coordinator(round_interval_s=0.0, round_timeout_s=60.0)
        yield made


def start_all(fleet: Fleet, rounds: int) -> None:
    for device in DEVICES:
        fleet.agent(device)
    fleet.coordinator("--rounds", str(rounds))


def test_two_hundred_rounds_over_mutual_tls_without_a_dropped_connection(fleet: Fleet) -> None:
    start_all(fleet, rounds=200)

    summaries = fleet.wait_for_rounds(200, timeout_s=600)
    codes = {daemon.name: daemon.stop() for daemon in fleet.daemons}

    assert [s["accepted"] for s in summaries] == [len(DEVICES)] * 200
    assert codes == dict.fromkeys(["coordinator", *DEVICES], 0)
    for daemon in fleet.daemons:
        drops = [
            line
            for line in daemon.log_text().splitlines()
            if any(marker in line for marker in CLIENT_DROP_MARKERS)
        ]
        assert drops == [], f"{daemon.name} lost its connection"
    broker_drops = [
        line
        for line in fleet.log_text().splitlines()
        if any(marker in line for marker in BROKER_DROP_MARKERS)
    ]
    assert broker_drops == []
    # The audit log the coordinator signed round by round verifies against its key.
    audit = fleet.root / "coordinator" / "state" / "audit.jsonl"
    key = fleet.root / "coordinator" / "coordinator.pub"
    assert main(["audit", "verify", str(audit), "--key", str(key)]) == 0


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_broker_restarts_lose_no_update_and_stall_no_round(
    fleet: Fleet, how: signal.Signals
) -> None:
    start_all(fleet, rounds=40)
    fleet.wait_for_rounds(3, timeout_s=180)
    for _ in range(3):
        fleet.stop_broker(how)
        time.sleep(1.0)
        fleet.start_broker()
        done = len(fleet.rounds())
        fleet.wait_for_rounds(done + 3, timeout_s=120)

    summaries = fleet.wait_for_rounds(40, timeout_s=300)

    assert [s["accepted"] for s in summaries] == [len(DEVICES)] * 40
    # A round that spans a restart waits for one reconnect, never for its 60 s deadline.
    assert all(s["closed_by"] == "all-answered" for s in summaries)
    assert max(s["duration_s"] for s in summaries) < 30.0


def test_a_coordinator_killed_mid_round_keeps_the_updates_it_accepted(fleet: Fleet) -> None:
    start_all(fleet, rounds=0)
    done = len(fleet.wait_for_rounds(2, timeout_s=180))
    # dev-004 freezes: the next round waits for it with the others' updates accepted.
    late = next(d for d in fleet.daemons if d.name == "dev-004")
    late.signal(signal.SIGSTOP)
    time.sleep(2.0)  # a round dev-004 had already answered may still close
    open_round = len(fleet.rounds()) + 1
    journal = fleet.root / "coordinator" / "state" / "round.journal"
    deadline = time.monotonic() + 60
    while (held := read_journal(journal)) is None or len(held.entries) < len(DEVICES) - 1:
        if time.monotonic() > deadline:
            fleet.fail("the open round never held four accepted updates")
        time.sleep(0.1)
    assert held.round == open_round
    assert "dev-004" not in {entry.device_id for entry in held.entries}
    coordinator = next(d for d in fleet.daemons if d.name == "coordinator")
    coordinator.kill()
    # The four devices that answered go away: they cannot re-send what the coordinator lost.
    for daemon in fleet.daemons:
        if daemon.name in DEVICES[:4]:
            daemon.stop()
    fleet.coordinator()
    late.signal(signal.SIGCONT)

    summaries = fleet.wait_for_rounds(open_round, timeout_s=120)

    assert len(summaries) >= done
    recovered = summaries[open_round - 1]
    assert recovered["round"] == open_round
    assert recovered["accepted_devices"] == list(DEVICES)


def test_an_offline_device_does_not_stall_rounds(fleet: Fleet) -> None:
    start_all(fleet, rounds=0)
    done = len(fleet.wait_for_rounds(2, timeout_s=180))
    gone = next(d for d in fleet.daemons if d.name == "dev-003")
    gone.kill()  # its last will marks it offline at once

    summaries = fleet.wait_for_rounds(done + 6, timeout_s=60)[done + 1 :]

    assert all(s["accepted_devices"] == [d for d in DEVICES if d != "dev-003"] for s in summaries)
    assert all(s["closed_by"] == "all-available" for s in summaries)
    assert all(s["unavailable"] == ["dev-003"] for s in summaries)
    assert max(s["duration_s"] for s in summaries) < 10.0


def test_an_agent_whose_updates_the_acl_refuses_reports_it_and_stalls_nothing(
    fleet: Fleet,
) -> None:
    # An operator's ACL edit leaves dev-001 out: every device but dev-001 is granted its
    # update topic by name (mosquitto has no deny rule; the broker restarts to read it).
    acl = fleet.root / "broker" / "acl"
    grants = "".join(
        f"user {device}\ntopic write byzedge/+/update/{device}\n"
        for device in DEVICES
        if device != "dev-001"
    )
    text = acl.read_text().replace("pattern write byzedge/+/update/%u\n", "")
    acl.write_text(text + grants)
    fleet.stop_broker()
    fleet.start_broker()
    start_all(fleet, rounds=0)

    # Round 1 also waits for the agents to start (importing torch): judge the ones after.
    summaries = fleet.wait_for_rounds(4, timeout_s=120)[1:]
    agent = next(d for d in fleet.daemons if d.name == "dev-001")

    assert "the broker refused the update" in agent.log_text()
    assert "Not authorized" in agent.log_text()
    # Its status said so for each round, so no round waited for it.
    assert all(s["unavailable"] == ["dev-001"] for s in summaries)
    assert all(s["closed_by"] == "all-available" for s in summaries)
    assert max(s["duration_s"] for s in summaries) < 10.0


def test_check_config_refuses_an_agent_holding_another_devices_certificate(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    mine, theirs = fleet.folder("dev-001") / "tls", fleet.folder("dev-002") / "tls"
    for name in ("client.crt", "client.key"):
        shutil.copy(theirs / name, mine / name)
    config = str(fleet.folder("dev-001") / "agent.toml")

    assert main(["agent", "check-config", "--config", config]) == 2
    assert "common name is 'dev-002', expected 'dev-001'" in capsys.readouterr().err
