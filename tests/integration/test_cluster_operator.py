"""What an operator deploys with ``byzedge init --workers 2``: mutual TLS, the ACL, processes.

The broker is the one ``byzedge init`` configures (mutual TLS, certificate CNs as user
names, the ACL); the coordinator leads two ingest workers, each a process of its own with
the ``ingest`` certificate init issued, and the agents train for real. The ACL lets the
workers read the updates through the shared subscription and publish partials, and lets
no device publish a partial or a receipt.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from provisioned import Daemon, Fleet, provisioned_fleet

from byzedge.daemon.mqtt import MqttClient
from byzedge.edge_agent.config import load_agent_config
from byzedge.protocol import topics

pytestmark = [pytest.mark.broker, pytest.mark.slow]

DEVICES = ("dev-000", "dev-001", "dev-002")
ROUNDS = 4


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    with provisioned_fleet(devices=len(DEVICES), init_args=["--workers", "2"]) as made:
        made.set_coordinator(round_interval_s=0.0, round_timeout_s=60.0)
        yield made


def wait_for_log(fleet: Fleet, daemon: Daemon, text: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in daemon.log_text():
        if time.monotonic() > deadline or daemon.process.poll() is not None:
            fleet.fail(f"{daemon.name} did not log {text!r}")
        time.sleep(0.1)


def test_rounds_run_through_two_workers_over_mutual_tls_and_the_acl(fleet: Fleet) -> None:
    workers = [fleet.worker(n, "--log-level", "DEBUG") for n in (1, 2)]
    for worker in workers:
        wait_for_log(fleet, worker, "consuming the fleet's updates")
    for device in DEVICES:
        fleet.agent(device)
    fleet.coordinator("--rounds", str(ROUNDS))

    summaries = fleet.wait_for_rounds(ROUNDS, timeout_s=300)
    codes = {daemon.name: daemon.stop() for daemon in fleet.daemons}

    assert [s["accepted"] for s in summaries] == [len(DEVICES)] * ROUNDS
    assert all(s["rejected"] == {} for s in summaries)
    assert codes == dict.fromkeys(["worker-1", "worker-2", "coordinator", *DEVICES], 0)
    # Both workers took a share of the updates through $share; nothing was denied.
    for worker in workers:
        assert "partial 1 sent" in worker.log_text()
    assert "Denied" not in fleet.log_text()


def test_a_device_can_publish_neither_a_partial_nor_a_receipt(fleet: Fleet) -> None:
    config = load_agent_config(fleet.folder(DEVICES[0]) / "agent.toml")
    client = MqttClient(config.mqtt, "acl-probe", on_message=lambda _t, _p: None)
    client.start(wait_s=15)
    try:
        refused = {}
        for topic in (
            topics.partial_topic(config.fleet, "ingest-1"),
            topics.receipts_topic(config.fleet),
            topics.context_topic(config.fleet),
        ):
            delivery = client.publish(topic, b"forged", qos=1)
            assert delivery.wait(10)
            refused[topic] = delivery.refused
    finally:
        client.stop()

    assert set(refused.values()) == {"Not authorized"}
