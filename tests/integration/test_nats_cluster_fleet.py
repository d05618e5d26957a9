"""Sharded ingest end to end on a real three-node NATS cluster (issue 12, ``broker = "nats"``).

The leader (``byzedge coordinator run`` holding the JetStream key-value lease) and two
``byzedge coordinator ingest-worker`` processes (one durable JetStream pull consumer)
run rounds of simulated devices that publish plain MQTT 3.1.1 to the cluster's MQTT
listener. A node that is neither the devices' nor the daemons' MQTT node is SIGKILLed
mid-round (it may lead the update stream or the lease bucket); the round still ends with
every device's update: what the stream lost while its leader was re-elected comes back
from the devices when the leader's receipts omit it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cluster_support import ClusterFleet, DeviceDriver, Schedule, cluster_fleet, seal_update

from byzedge.fleet_sim.brokers import BrokerHandle
from byzedge.fleet_sim.nats_cluster import NatsCluster

pytestmark = [pytest.mark.broker, pytest.mark.slow]

DEVICES = 8
ROUNDS = 3


@pytest.fixture
def fleet(tmp_path: Path, nats_cluster: NatsCluster) -> Iterator[ClusterFleet]:
    with cluster_fleet(tmp_path, DEVICES) as made:
        first = nats_cluster.nodes[0]
        # Not ours to stop: the nats_cluster fixture owns the nodes.
        made.broker = BrokerHandle("127.0.0.1", first.mqtt_port, "external")
        yield made


def _nats_config(fleet: ClusterFleet, cluster: NatsCluster) -> Path:
    config = fleet.write_config("leader", workers=2, rounds=ROUNDS)
    text = config.read_text()
    fallbacks = json.dumps(cluster.mqtt_urls[1:])
    text = text.replace(
        "reconnect_max_s = 2.0",
        f'reconnect_max_s = 2.0\nprotocol = "3.1.1"\nfallback_urls = {fallbacks}',
    )
    text += f'broker = "nats"\nnats_servers = {json.dumps(cluster.nats_urls)}\n'
    config.write_text(text)
    return config


def _schedule(fleet: ClusterFleet) -> Schedule:
    rng = np.random.default_rng(5)
    plan: Schedule = {}
    for round_number in range(1, ROUNDS + 1):
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
        half = DEVICES // 2
        plan[round_number] = [(0.0, messages[:half]), (3.0, messages[half:])]
    return plan


def test_rounds_run_through_two_jetstream_workers_and_survive_a_node_kill(
    fleet: ClusterFleet, nats_cluster: NatsCluster
) -> None:
    config = _nats_config(fleet, nats_cluster)
    workers = fleet.start_workers(config, 2)
    leader = fleet.coordinator(config, "leader")
    fleet.wait_for_log(leader, "leading with epoch", timeout_s=90.0)
    driver = DeviceDriver(fleet, _schedule(fleet), grace_s=4.0)
    try:
        fleet.wait_for_rounds("leader", 1, timeout_s=120)
        # Mid-round 2: between the two halves of its updates.
        deadline = time.monotonic() + 120.0
        while 2 not in driver.models:
            if time.monotonic() > deadline:
                fleet.fail("round 2's model never came")
            time.sleep(0.05)
        time.sleep(1.0)  # the first half of round 2 is on its way
        nats_cluster.nodes[1].kill()
        summaries = fleet.wait_for_rounds("leader", ROUNDS, timeout_s=240)
        assert leader.process.wait(timeout=60) == 0
    finally:
        driver.close()

    assert [s["accepted"] for s in summaries] == [DEVICES] * ROUNDS
    # JetStream may deliver a message twice (an ack lost with the killed node comes back
    # after ack_wait) and devices re-send: such copies are refused as replays or as late,
    # never as anything else.
    reasons = {reason for s in summaries for reason in s["rejected"]}
    assert reasons <= {"replay", "wrong-round"}
    taken = [
        set(re.findall(r"round \d+: accepted (\S+)'s update", worker.log_text()))
        for worker in workers
    ]
    assert set().union(*taken) == set(fleet.devices.ids)
    print(f"\nre-sent after receipts omitted them: {driver.resent}")
