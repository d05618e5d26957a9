"""Sharded ingest loses no accepted update when a worker or the leader dies (issue 12).

Every daemon is a process of its own on a private mosquitto; the devices are simulated by
:class:`~cluster_support.DeviceDriver`, which re-sends an update when the leader's receipts
omit it and sends the round's updates again when the round's model comes again, as agents
do.

* A worker SIGKILLed while it holds unacknowledged updates: mosquitto drops them (clean
  session; shared/reference/scale-out.md section 8), the receipts omit their devices, the
  devices send them again, and the surviving worker takes them: the round completes with
  every device's update.
* The leader SIGKILLed mid-round: a standby started with the same configuration, blocked
  on the leader lease, takes over with the next epoch, replays the partials its
  predecessor journaled, reopens the round and finishes it and the next.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cluster_support import ClusterFleet, DeviceDriver, Schedule, cluster_fleet, seal_update

from byzedge.coordinator.journal import read_journal

pytestmark = [pytest.mark.broker, pytest.mark.slow]

DEVICES = 12


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[ClusterFleet]:
    with cluster_fleet(tmp_path, DEVICES) as made:
        made.start_broker()
        yield made


def schedule(fleet: ClusterFleet, rounds: int, *, split_round: int | None = None) -> Schedule:
    """One update per device and round; ``split_round``'s second half 4 s after its first."""
    rng = np.random.default_rng(3)
    plan: Schedule = {}
    for round_number in range(1, rounds + 1):
        messages = [
            seal_update(
                fleet,
                index,
                round_number,
                rng.standard_normal(fleet.dim).astype(np.float32) * 0.01,
                counter=1000 * round_number + index,
            )
            for index in range(DEVICES)
        ]
        if round_number == split_round:
            half = DEVICES // 2
            plan[round_number] = [(0.0, messages[:half]), (4.0, messages[half:])]
        else:
            plan[round_number] = [(0.0, messages)]
    return plan


def test_a_worker_killed_mid_round_loses_no_update(fleet: ClusterFleet) -> None:
    # Workers hold a share for 3 s before they send it, so the one killed holds some.
    config = fleet.write_config("leader", workers=2, rounds=2)
    text = config.read_text().replace("partial_flush_s = 0.2", "partial_flush_s = 3.0")
    config.write_text(text)
    doomed, survivor = fleet.start_workers(config, 2)
    driver = DeviceDriver(fleet, schedule(fleet, 2), grace_s=4.0)
    try:
        leader = fleet.coordinator(config, "leader")
        fleet.wait_for_log(doomed, "round 1: accepted")
        time.sleep(0.5)  # the rest of its share arrives
        doomed.kill()
        summaries = fleet.wait_for_rounds("leader", 2, timeout_s=60)
        assert leader.process.wait(timeout=30) == 0
    finally:
        driver.close()

    assert [s["accepted"] for s in summaries] == [DEVICES, DEVICES]
    assert [s["closed_by"] for s in summaries] == ["all-answered"] * 2
    assert summaries[0]["rejected"] == {}
    # What the dead worker held never reached the leader: exactly its devices sent their
    # update again, and the survivor took them.
    assert "partial 1 sent" not in doomed.log_text()
    lost = set(re.findall(r"round 1: accepted (\S+)'s update", doomed.log_text()))
    resent = {device for round_number, device in driver.resent if round_number == 1}
    assert lost
    assert resent == lost
    taken = set(re.findall(r"round 1: accepted (\S+)'s update", survivor.log_text()))
    assert taken == set(fleet.devices.ids)


def test_a_standby_takes_over_when_the_leader_is_killed(fleet: ClusterFleet) -> None:
    config = fleet.write_config("leader", workers=2, rounds=3)
    fleet.start_workers(config, 2)
    driver = DeviceDriver(fleet, schedule(fleet, 3, split_round=2), grace_s=2.0)
    try:
        leader = fleet.coordinator(config, "leader-1")
        fleet.wait_for_log(leader, "leading with epoch 1")
        standby = fleet.coordinator(config, "leader-2")
        fleet.wait_for_log(standby, "standing by until the leader lease is free")
        fleet.wait_for_rounds("leader", 1, timeout_s=60)
        journal = fleet.root / "leader" / "state" / "partials.journal"
        deadline = time.monotonic() + 30
        while True:  # round 2 is open and the leader has taken some of its partials
            contents = read_journal(journal)
            if contents is not None and contents.round == 2 and contents.entries:
                break
            assert time.monotonic() < deadline, "round 2 never started"
            time.sleep(0.05)
        leader.kill()
        fleet.wait_for_log(standby, "leading with epoch 2")
        summaries = fleet.wait_for_rounds("leader", 3, timeout_s=90)
        assert standby.process.wait(timeout=30) == 0
    finally:
        driver.close()

    assert [s["round"] for s in summaries] == [1, 2, 3]
    assert [s["accepted"] for s in summaries] == [DEVICES] * 3
    assert [s["model_version"] for s in summaries] == [1, 2, 3]
    assert "partial(s) recovered from the journal" in standby.log_text()
    assert "round 2: rows mode (epoch 2)" in standby.log_text()
