"""An agent sends its update again when the coordinator's receipts omit it (sharded ingest).

A real agent over the in-memory broker; the test plays the coordinator: it publishes a
signed model, then receipts signed by the coordinator's key.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from byzedge.daemon.transport import Endpoint, InMemoryBroker, InMemoryTransport
from byzedge.edge_agent.sensors import build_source
from byzedge.edge_agent.service import Agent
from byzedge.fleet_sim.fleet import FleetSpec, InProcessFleet
from byzedge.models import get_model_spec, initial_parameters
from byzedge.protocol import topics
from byzedge.protocol.manifest import seal_global_model
from byzedge.protocol.receipts import seal_receipt
from byzedge.protocol.signing import SigningKey

FLEET = "rcpt"
GRACE_S = 0.4


class Played:
    """The agent under test and the coordinator's side of the broker."""

    def __init__(self, tmp_path: Path) -> None:
        self.broker = InMemoryBroker()
        spec = FleetSpec(fleet=FLEET, broker_url="mqtt://unused:1", devices=1, rounds=1)
        fleet = InProcessFleet(spec, tmp_path, transport=self.broker.connect)
        config = fleet.agents[0].config.model_copy(update={"receipt_grace_s": GRACE_S})
        self.device = config.device_id
        self.key = SigningKey.load(tmp_path / "keys" / "coordinator.key")
        self.agent = Agent(
            config,
            signing_key=SigningKey.load(config.signing_key),
            coordinator_key=self.key.verify_key,
            source=build_source(config.data),
            transport=self.broker.connect,
        )
        self.coordinator: InMemoryTransport = self.broker.connect(
            Endpoint("coordinator", on_message=lambda _t, _p: None)
        )
        self.coordinator.start()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.agent.run, args=(self.stop,), daemon=True)
        self.thread.start()
        self.counter = 0

    def updates(self) -> list[bytes]:
        topic = topics.update_topic(FLEET, self.device)
        return [payload for t, payload in self.broker.published if t == topic]

    def publish_model(self) -> None:
        spec = get_model_spec("mlp")
        params = initial_parameters(spec, np.random.default_rng(0))
        envelope = seal_global_model(
            self.key,
            fleet=FLEET,
            sender="coordinator",
            round_number=1,
            version=0,
            model="mlp",
            params=params,
            counter=1,
        )
        self.coordinator.publish(topics.model_topic(FLEET), envelope.to_bytes(), retain=True)

    def publish_receipt(self, held: set[str], round_number: int = 1) -> None:
        self.counter += 1
        payload = seal_receipt(
            self.key,
            fleet=FLEET,
            sender="coordinator",
            round_number=round_number,
            model_version=round_number - 1,
            epoch=1,
            counter=self.counter,
            held=held,
            expected={self.device},
            partials={},
        )
        self.coordinator.publish(topics.receipts_topic(FLEET), payload, retain=True)

    def wait_for_updates(self, count: int, timeout_s: float = 60.0) -> list[bytes]:
        deadline = time.monotonic() + timeout_s
        while len(sent := self.updates()) < count:
            assert time.monotonic() < deadline, f"{len(sent)} of {count} updates"
            time.sleep(0.02)
        return sent


@pytest.fixture
def played(tmp_path: Path) -> Iterator[Played]:
    made = Played(tmp_path)
    try:
        yield made
    finally:
        made.stop.set()
        made.thread.join(timeout=30)


def test_an_update_the_receipts_omit_is_sent_again_byte_for_byte(played: Played) -> None:
    played.publish_model()
    first = played.wait_for_updates(1)[0]
    time.sleep(GRACE_S + 0.1)

    played.publish_receipt(held=set())

    again = played.wait_for_updates(2)
    assert again[1] == first
    assert played.agent.updates_resent == 1


def test_no_resend_once_held_or_within_the_grace(played: Played) -> None:
    played.publish_model()
    played.wait_for_updates(1)
    played.publish_receipt(held=set())  # within the grace: the update may be on its way
    time.sleep(0.2)
    played.publish_receipt(held={played.device})
    time.sleep(GRACE_S + 0.2)
    played.publish_receipt(held=set(), round_number=2)  # another round's: not about it

    time.sleep(0.5)
    assert len(played.updates()) == 1
    assert played.agent.updates_resent == 0
