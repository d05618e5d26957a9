"""Agents never run (or train on) a global model that the coordinator's key did not sign.

Real agents on the real mosquitto, no coordinator: the test publishes the retained model
itself, first forged with a fresh key, then signed with the fleet's coordinator key.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from byzedge.daemon.mqtt import MqttClient, MqttSettings
from byzedge.fleet_sim.brokers import BrokerHandle
from byzedge.fleet_sim.fleet import FleetSpec, InProcessFleet
from byzedge.models import get_model_spec, initial_parameters
from byzedge.protocol import topics
from byzedge.protocol.manifest import seal_global_model
from byzedge.protocol.signing import SigningKey

pytestmark = pytest.mark.broker

TIMEOUT_S = 20.0


def wait_until(condition: Callable[[], bool], timeout_s: float = TIMEOUT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.fixture
def fleet(tmp_path: Path, mosquitto_broker: BrokerHandle) -> Iterator[InProcessFleet]:
    spec = FleetSpec(
        fleet=f"forged-{uuid.uuid4().hex[:8]}",
        broker_url=mosquitto_broker.url,
        devices=3,
        rounds=1,
        epochs=1,
        # The coordinator is built but never run: without an audit log it opens no file.
        coordinator_overrides={"validation": "none", "audit_logging": False},
    )
    fleet = InProcessFleet(spec, tmp_path)
    fleet.start_agents()
    try:
        yield fleet
    finally:
        fleet.stop_agents()


@pytest.fixture
def publisher(mosquitto_broker: BrokerHandle) -> Iterator[MqttClient]:
    client = MqttClient(
        MqttSettings(url=mosquitto_broker.url),
        f"publisher-{uuid.uuid4().hex[:8]}",
        on_message=lambda _topic, _payload: None,
    )
    client.start(wait_s=10.0)
    try:
        yield client
    finally:
        client.stop(flush_s=2.0)


def publish_model(
    fleet: InProcessFleet, publisher: MqttClient, key: SigningKey, *, version: int, counter: int
) -> None:
    spec = get_model_spec(fleet.spec.model)
    envelope = seal_global_model(
        key,
        fleet=fleet.spec.fleet,
        sender="coordinator",
        round_number=1,
        version=version,
        model=fleet.spec.model,
        params=initial_parameters(spec, np.random.default_rng(0)),
        counter=counter,
    )
    publisher.publish(topics.model_topic(fleet.spec.fleet), envelope.to_bytes(), retain=True)


def test_agents_refuse_a_model_signed_by_another_key_then_accept_the_coordinators(
    fleet: InProcessFleet, publisher: MqttClient
) -> None:
    # The forgery claims a far newer version and counter: had an agent trusted it, it would
    # now refuse the genuine model below as a rollback or a replay.
    publish_model(fleet, publisher, SigningKey.generate(), version=1_000, counter=2**62)

    assert wait_until(lambda: all(a.refused_models >= 1 for a in fleet.agents))
    assert [a.updates_sent for a in fleet.agents] == [0] * len(fleet.agents)
    assert not any((a.config.state_dir / "model.onnx").exists() for a in fleet.agents)

    coordinator_key = SigningKey.load(fleet.workdir / "keys" / "coordinator.key")
    publish_model(fleet, publisher, coordinator_key, version=0, counter=1)

    assert wait_until(lambda: all(a.updates_sent >= 1 for a in fleet.agents))
    assert all((a.config.state_dir / "model.onnx").exists() for a in fleet.agents)
    assert [a.refused_models for a in fleet.agents] == [1] * len(fleet.agents)
