"""A coordinator on a real broker shrugs off hostile updates and finishes its rounds.

Four devices are enrolled; three run as honest agents and the fourth's private key has been
stolen by an attacker, who publishes (on real update topics, over the real broker) garbage,
a truncated envelope, a flipped-byte update, sybil updates, an oversize message, replays of
captured honest updates and a NaN update signed with the stolen key. A replay of an update
the coordinator accepted in the open round or the one before is a harmless copy
(``redelivered``, what an agent's re-send looks like); an older one is a ``replay``. The
stolen device never sends anything honest, so each round closes as soon as the three honest
updates are in and the NaN update has marked the stolen device as misbehaving; every hostile
message of a round is published before that NaN update, on the same connection, so the
coordinator has judged them all before the round closes.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from byzedge.coordinator.service import RoundSummary
from byzedge.daemon.mqtt import MqttClient, MqttSettings
from byzedge.edge_agent.pipeline import UpdatePipeline
from byzedge.edge_agent.seams import RoundContext
from byzedge.fleet_sim.brokers import BrokerHandle
from byzedge.fleet_sim.fleet import FleetSpec, InProcessFleet
from byzedge.protocol import topics
from byzedge.protocol.envelope import open_envelope
from byzedge.protocol.errors import ProtocolError
from byzedge.protocol.manifest import GlobalModel, open_global_model
from byzedge.protocol.signing import SigningKey, VerifyKey

pytestmark = pytest.mark.broker

ROUNDS = 3
STOLEN = "dev-000"
HONEST = ("dev-001", "dev-002", "dev-003")
MAX_MESSAGE_BYTES = 128 * 1024
DEADLINE_S = 60.0

# What the attacker sends, round by round (see Attacker), and the reason each must get.
EXPECTED_PER_ROUND = [
    {
        "malformed": 2,  # garbage bytes; a truncated envelope
        "bad-signature": 2,  # one flipped body byte; a sybil claiming dev-001 on its topic
        "unknown-device": 1,  # a sybil under an unenrolled id, on that id's topic
        "wrong-topic": 1,  # a sybil that names itself but publishes on dev-002's topic
        "oversize": 1,  # 200 KiB in one MQTT message
        "non-finite": 1,  # NaN, signed with the stolen key
    },
    {"non-finite": 1},
    {"replay": 1, "non-finite": 1},  # a round-1 honest update replayed in round 3
]
# Copies of updates accepted this round or the round before: ignored, not rejected.
EXPECTED_REDELIVERED = [
    1,  # an honest update of round 1, published again after it was accepted
    1,  # a round-1 honest update published again in round 2
    0,
]


@pytest.fixture(params=["mosquitto", "embedded"])
def broker(request: pytest.FixtureRequest) -> BrokerHandle:
    handle = request.getfixturevalue(f"{request.param}_broker")
    assert isinstance(handle, BrokerHandle)
    return handle


@contextmanager
def running(client: MqttClient) -> Iterator[MqttClient]:
    client.start(wait_s=10.0)
    try:
        yield client
    finally:
        client.stop(flush_s=2.0)


class Attacker:
    """Publishes hostile updates through its own MQTT connection.

    Its client allows 1 MiB messages, so the oversize payload leaves as one MQTT message
    instead of being chunked by our client.
    """

    def __init__(self, fleet: InProcessFleet, url: str) -> None:
        self.fleet_name = fleet.spec.fleet
        self.stolen_key = SigningKey.load(fleet.workdir / "keys" / f"{STOLEN}.key")
        self.sybil_key = SigningKey.generate()
        self.client = MqttClient(
            MqttSettings(url=url, max_message_bytes=1 << 20),
            f"attacker-{uuid.uuid4().hex[:8]}",
            on_message=lambda _topic, _payload: None,
        )

    def send(self, device: str, payload: bytes) -> None:
        messages = self.client.publish(
            topics.update_topic(self.fleet_name, device), payload
        ).messages
        assert messages == 1

    def update(self, key: SigningKey, sender: str, model: GlobalModel, vector: np.ndarray) -> bytes:
        context = RoundContext(
            device_id=sender,
            round=model.round,
            global_params=model.params,
            rng=np.random.default_rng(0),
        )
        prepared = UpdatePipeline("dense").prepare(
            vector.astype(np.float32),
            context,
            key=key,
            fleet=self.fleet_name,
            base_version=model.version,
            counter=time.time_ns() // 1000,
        )
        return prepared.wire_bytes

    def first_wave(self, model: GlobalModel) -> None:
        """Everything that needs no captured traffic, on the round-1 model."""
        small = np.full(model.params.shape, 1e-3, dtype=np.float32)
        self.send(STOLEN, b"\xde\xad\xbe\xef" * 64)
        valid = self.update(self.stolen_key, STOLEN, model, small)
        self.send(STOLEN, valid[: len(valid) // 2])
        flipped = bytearray(self.update(self.stolen_key, STOLEN, model, small))
        flipped[-200] ^= 0x40  # inside the body: the dense floats end 64 bytes before the end
        self.send(STOLEN, bytes(flipped))
        self.send(HONEST[0], self.update(self.sybil_key, HONEST[0], model, small))
        self.send("sybil-9", self.update(self.sybil_key, "sybil-9", model, small))
        self.send(HONEST[1], self.update(self.sybil_key, "sybil-9", model, small))
        self.send(STOLEN, os.urandom(200 * 1024))

    def poison(self, model: GlobalModel) -> None:
        """A NaN update signed with the stolen key: closes the stolen device's round."""
        nan = np.full(model.params.shape, np.nan, dtype=np.float32)
        self.send(STOLEN, self.update(self.stolen_key, STOLEN, model, nan))


class Observer:
    """Watches the model topic and every update topic, as any broker client could."""

    def __init__(self, fleet: InProcessFleet, url: str) -> None:
        self.fleet_name = fleet.spec.fleet
        self.coordinator_key = VerifyKey.load(fleet.workdir / "keys" / "coordinator.pub")
        self.device_keys = {d: VerifyKey.load(fleet.workdir / "keys" / f"{d}.pub") for d in HONEST}
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.client = MqttClient(
            MqttSettings(url=url, max_message_bytes=1 << 20),
            f"observer-{uuid.uuid4().hex[:8]}",
            on_message=lambda topic, payload: self.inbox.put((topic, payload)),
            subscriptions=[
                (topics.model_topic(self.fleet_name), 1),
                (topics.update_wildcard(self.fleet_name), 1),
            ],
        )

    def model(self, topic: str, payload: bytes) -> GlobalModel | None:
        if topic != topics.model_topic(self.fleet_name):
            return None
        return open_global_model(
            payload, self.coordinator_key, fleet=self.fleet_name, max_bytes=1 << 24
        )

    def honest_update(self, topic: str, payload: bytes) -> tuple[str, int] | None:
        """``(device, round)`` of a genuine update from an honest device, else ``None``."""
        try:
            device = topics.parse_device_topic(topic, self.fleet_name, "update")
            key = self.device_keys.get(device)
            if key is None:
                return None
            envelope = open_envelope(payload, 1 << 24)
            envelope.verify(key)
        except ProtocolError:
            return None
        return device, envelope.header.round


def run_attack(
    observer: Observer, attacker: Attacker, coordinator_done: Callable[[], bool]
) -> None:
    """Drive the attack from what the observer sees, until the coordinator is done."""
    models: dict[int, GlobalModel] = {}
    captured: dict[int, dict[str, bytes]] = {}
    replayed_in_round_1 = False
    deadline = time.monotonic() + DEADLINE_S
    while not coordinator_done() and time.monotonic() < deadline:
        try:
            topic, payload = observer.inbox.get(timeout=0.2)
        except queue.Empty:
            continue
        model = observer.model(topic, payload)
        if model is not None:
            if model.final or model.round in models:
                continue
            models[model.round] = model
            if model.round == 1:
                attacker.first_wave(model)
            elif model.round == 2:
                attacker.send(HONEST[1], captured[1][HONEST[1]])
                attacker.poison(model)
            else:
                attacker.send(HONEST[2], captured[1][HONEST[2]])
                attacker.poison(model)
            continue
        seen = observer.honest_update(topic, payload)
        if seen is None:
            continue
        device, round_number = seen
        captured.setdefault(round_number, {}).setdefault(device, payload)
        if round_number == 1 and len(captured[1]) == len(HONEST) and not replayed_in_round_1:
            replayed_in_round_1 = True
            # The coordinator had each of these before the observer did: it has accepted them.
            attacker.send(HONEST[0], captured[1][HONEST[0]])
            attacker.poison(models[1])


def test_coordinator_rejects_every_hostile_update_and_finishes_all_rounds(
    tmp_path: Path, broker: BrokerHandle
) -> None:
    summaries: list[RoundSummary] = []
    spec = FleetSpec(
        fleet=f"hostile-{uuid.uuid4().hex[:8]}",
        broker_url=broker.url,
        mqtt_protocol=broker.protocol,
        devices=1 + len(HONEST),
        rounds=ROUNDS,
        round_timeout_s=20.0,  # an upper bound only: rounds close when all have answered
        epochs=1,
        coordinator_overrides={"validation": "none"},
    )
    fleet = InProcessFleet(spec, tmp_path, on_round=summaries.append)
    assert fleet.coordinator_config.mqtt.max_message_bytes == MAX_MESSAGE_BYTES
    observer = Observer(fleet, broker.url)
    attacker = Attacker(fleet, broker.url)
    stop_agents = threading.Event()
    agent_threads = [
        threading.Thread(target=agent.run, args=(stop_agents,), daemon=True)
        for agent in fleet.agents
        if agent.config.device_id in HONEST
    ]
    coordinator_thread = threading.Thread(target=fleet.coordinator.run, daemon=True)
    with running(observer.client), running(attacker.client):
        # The observer's subscription is live once it sees a probe on an update topic.
        attacker.send("probe", b"probe")
        assert observer.inbox.get(timeout=10.0)[1] == b"probe"
        for thread in agent_threads:
            thread.start()
        try:
            coordinator_thread.start()
            run_attack(observer, attacker, lambda: not coordinator_thread.is_alive())
            coordinator_thread.join(timeout=10.0)
        finally:
            stop_agents.set()
            for thread in agent_threads:
                thread.join(timeout=15.0)

    assert not coordinator_thread.is_alive()
    assert fleet.coordinator.state.completed_round == ROUNDS
    assert [s.round for s in summaries] == list(range(1, ROUNDS + 1))
    assert [s.accepted for s in summaries] == [len(HONEST)] * ROUNDS
    assert all(s.accepted_devices == list(HONEST) for s in summaries)
    assert not any(s.skipped for s in summaries)
    assert [s.rejected for s in summaries] == EXPECTED_PER_ROUND
    assert [s.redelivered for s in summaries] == EXPECTED_REDELIVERED
    total: Counter[str] = Counter()
    for expected in EXPECTED_PER_ROUND:
        total.update(expected)
    assert summaries[-1].rejected_total == dict(total)
    assert fleet.coordinator.state.rejected_total == dict(total)
    on_disk = (fleet.coordinator_config.state_dir / "rounds.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in on_disk] == [json.loads(s.to_json()) for s in summaries]
