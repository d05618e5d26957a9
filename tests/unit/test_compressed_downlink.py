"""Byz-EF21-BC's compressed broadcast: the wire format, the server's choice, the follower.

The fleet-level run (agents following broadcasts over the in-memory broker) is at the end;
the same over mosquitto with mutual TLS and the generated ACL is in
tests/integration/test_method_fleet.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from byzedge.coordinator.downlink import compressed_downlink
from byzedge.coordinator.service import RoundSummary
from byzedge.daemon.transport import InMemoryBroker
from byzedge.edge_agent.downlink import DownlinkFollower, Subscriptions
from byzedge.fleet_sim.fleet import FleetSpec, InProcessFleet
from byzedge.methods.base import ServerState
from byzedge.methods.ef21_bc import ByzEF21BC, follow_broadcast
from byzedge.protocol import topics
from byzedge.protocol.broadcast import (
    Round,
    open_model_broadcast,
    open_model_resync,
    seal_model_broadcast,
    seal_model_resync,
    vector_digest,
)
from byzedge.protocol.envelope import seal
from byzedge.protocol.errors import ProtocolError
from byzedge.protocol.manifest import GlobalModel
from byzedge.protocol.signing import SigningKey

FLEET = "bc"
DIM = 64
STEP = 0.5
_MAX = 1 << 22


def _round(number: int, *, final: bool = False) -> Round:
    plan = {"algorithm": "byz-ef21-bc", "round": number, "step_size": STEP}
    return Round(
        fleet=FLEET,
        sender="coordinator",
        round=number,
        version=number - 1,
        model="mlp",
        counter=1_000 + number,
        final=final,
        plan=plan,
    )


class _Server:
    """Byz-EF21-BC's server half driven round by round, with random robust aggregates."""

    def __init__(self, seed: int = 0) -> None:
        self.method = ByzEF21BC(step_size=STEP, downlink_sparsity=0.1)
        self.state = ServerState()
        self.params = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
        self.rng = np.random.default_rng(seed + 1)
        self.round = 0

    def step(self, *, moved: bool = True) -> None:
        """Close the open round (``moved=False``: nothing arrived), then plan the next."""
        if self.round and moved:
            plan = self.method.plan(self.round, self.params, ServerState())
            aggregate = self.rng.normal(size=DIM).astype(np.float32)
            self.params = self.method.apply(plan, self.params, aggregate, self.state)
        self.round += 1
        self.state.publish(self.params)

    def downlink(self, key: SigningKey) -> dict[str, bytes]:
        messages = compressed_downlink(
            key, _round(self.round), self.state, step_size=STEP, max_message_bytes=_MAX
        )
        return dict(messages.messages)


class _Subscriptions:
    def __init__(self) -> None:
        self.held: set[str] = {topics.model_topic(FLEET)}
        self.asked: list[str] = []

    def subscribe(self, topic: str) -> None:
        self.held.add(topic)
        self.asked.append(topic)

    def unsubscribe(self, topic: str) -> None:
        self.held.discard(topic)


def _follower(key: SigningKey, subscriptions: _Subscriptions) -> DownlinkFollower:
    return DownlinkFollower(
        FLEET,
        key.verify_key,
        max_bytes=_MAX,
        dim=DIM,
        subscriptions=Subscriptions(subscriptions.subscribe, subscriptions.unsubscribe),
    )


# -- the wire format ----------------------------------------------------------------------


def test_a_broadcast_carries_only_its_support_and_round_trips() -> None:
    key = SigningKey.generate()
    b = np.zeros(1_000, dtype=np.float32)
    b[[3, 500, 999]] = [1.5, -2.0, 0.25]
    payload = seal_model_broadcast(
        key, _round(2), mode="delta", dim=1_000, sha256="x", g_sha256="g", broadcast=b, step=True
    ).to_bytes()

    opened = open_model_broadcast(payload, key.verify_key, fleet=FLEET, max_bytes=_MAX)

    assert opened.mode == "delta"
    assert opened.step
    assert opened.broadcast is not None
    np.testing.assert_array_equal(opened.broadcast, b)
    # Three coordinates at 8 bytes each, against 4,000 for the dense vector.
    assert len(payload) < 4 * 1_000 / 2


def test_forged_tampered_and_out_of_range_broadcasts_are_refused() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    b = np.zeros(DIM, dtype=np.float32)
    b[5] = 1.0
    sealed = seal_model_broadcast(
        key, _round(2), mode="delta", dim=DIM, sha256="x", broadcast=b, step=True
    )
    forged = seal_model_broadcast(
        other, _round(2), mode="delta", dim=DIM, sha256="x", broadcast=b, step=True
    )
    tampered = sealed.to_bytes()[:-80] + bytes(80)

    for payload in (forged.to_bytes(), tampered, b"junk"):
        with pytest.raises(ProtocolError):
            open_model_broadcast(payload, key.verify_key, fleet=FLEET, max_bytes=_MAX)
    with pytest.raises(ProtocolError, match="fleet"):
        open_model_broadcast(sealed.to_bytes(), key.verify_key, fleet="other", max_bytes=_MAX)


def test_a_resync_pair_whose_vectors_do_not_match_their_digests_is_refused() -> None:
    key = SigningKey.generate()
    x = np.arange(DIM, dtype=np.float32)
    g = np.ones(DIM, dtype=np.float32)
    pair = open_model_resync(
        seal_model_resync(key, _round(3), x, g).to_bytes(),
        key.verify_key,
        fleet=FLEET,
        max_bytes=_MAX,
    )
    np.testing.assert_array_equal(pair.model.params, x)
    np.testing.assert_array_equal(pair.g, g)
    assert pair.model.sha256 == vector_digest(x)

    # A pair sealed over other bytes than its digests say (a coordinator bug, or a forger
    # who has the key but not the state) does not open.
    envelope = seal_model_resync(key, _round(3), x, g)
    header = envelope.header
    meta = {**header.meta, "downlink": {"mode": "resync", "g_sha256": vector_digest(x)}}
    lying = dataclasses.replace(header, meta=meta)

    with pytest.raises(ProtocolError, match="g does not match"):
        open_model_resync(
            seal(lying, envelope.body, key).to_bytes(),
            key.verify_key,
            fleet=FLEET,
            max_bytes=_MAX,
        )


# -- the server's choice ------------------------------------------------------------------


def test_the_server_sends_a_delta_only_when_the_last_pair_leads_here_bit_for_bit() -> None:
    key = SigningKey.generate()
    server = _Server()
    modes = []
    for _ in range(4):
        server.step()
        payload = server.downlink(key)[topics.broadcast_topic(FLEET)]
        modes.append(
            open_model_broadcast(payload, key.verify_key, fleet=FLEET, max_bytes=_MAX).mode
        )
    # Round 1: no estimator yet (dense). Round 2: the first g went out dense, so devices
    # fetch the pair. From round 3 on, the sparse b follows from the pair before.
    assert modes == ["dense", "resync", "delta", "delta"]

    server.step(moved=False)  # a round in which nothing arrived
    still = open_model_broadcast(
        server.downlink(key)[topics.broadcast_topic(FLEET)],
        key.verify_key,
        fleet=FLEET,
        max_bytes=_MAX,
    )
    assert (still.mode, still.step) == ("delta", False)

    assert server.state.g is not None
    server.state.g = server.state.g + np.float32(1.0)  # an estimator changed elsewhere
    server.step()
    moved_elsewhere = open_model_broadcast(
        server.downlink(key)[topics.broadcast_topic(FLEET)],
        key.verify_key,
        fleet=FLEET,
        max_bytes=_MAX,
    )
    assert moved_elsewhere.mode == "resync"


def test_a_pair_too_large_to_retain_sends_the_fleet_to_the_dense_model() -> None:
    key = SigningKey.generate()
    server = _Server()
    for _ in range(3):
        server.step()
    messages = compressed_downlink(
        key, _round(3), server.state, step_size=STEP, max_message_bytes=8 * DIM
    )
    assert messages.mode == "dense"


# -- the follower -------------------------------------------------------------------------


def test_a_device_follows_broadcasts_bit_for_bit_and_resyncs_after_a_gap() -> None:
    key = SigningKey.generate()
    server = _Server(seed=3)
    subscriptions = _Subscriptions()
    follower = _follower(key, subscriptions)
    broadcast_topic, resync_topic = topics.broadcast_topic(FLEET), topics.resync_topic(FLEET)
    for _ in range(2):
        server.step()
    # The device learns from a dense model that the fleet broadcasts compressed.
    dense = server.downlink(key)
    follower.saw_dense_model(
        GlobalModel(2, 1, "mlp", server.params, None, 0, False, "", 1, plan=_round(2).plan)
    )
    assert resync_topic in subscriptions.held
    model = follower.take(resync_topic, dense[resync_topic])
    assert follower.mode == "compressed"
    assert subscriptions.held == {broadcast_topic}
    assert isinstance(model, GlobalModel)
    assert model.round == 2

    for _ in range(4):  # rounds 3-6: only broadcasts
        server.step()
        rebuilt = follower.take(broadcast_topic, server.downlink(key)[broadcast_topic])
        assert isinstance(rebuilt, GlobalModel)
        np.testing.assert_array_equal(rebuilt.params, server.params)
        assert rebuilt.sha256 == vector_digest(server.params)
    assert follower.resyncs == 1

    server.step()  # round 7's broadcast is lost on the way
    server.step()
    messages = server.downlink(key)
    assert follower.take(broadcast_topic, messages[broadcast_topic]) is None
    assert resync_topic in subscriptions.held
    resynced = follower.take(resync_topic, messages[resync_topic])
    assert isinstance(resynced, GlobalModel)
    np.testing.assert_array_equal(resynced.params, server.params)
    assert follower.resyncs == 2
    assert resync_topic not in subscriptions.held

    server.step()  # and it follows again
    again = follower.take(broadcast_topic, server.downlink(key)[broadcast_topic])
    assert isinstance(again, GlobalModel)
    np.testing.assert_array_equal(again.params, server.params)
    assert follower.refused == 0


def test_a_forged_broadcast_is_refused_and_a_dense_one_sends_the_device_back() -> None:
    key, forger = SigningKey.generate(), SigningKey.generate()
    server = _Server()
    subscriptions = _Subscriptions()
    follower = _follower(key, subscriptions)
    for _ in range(3):
        server.step()
    follower._fetch_pair("test")
    follower.take(topics.resync_topic(FLEET), server.downlink(key)[topics.resync_topic(FLEET)])
    server.step()
    forged = server.downlink(forger)[topics.broadcast_topic(FLEET)]

    assert follower.take(topics.broadcast_topic(FLEET), forged) is None
    assert follower.refused == 1
    assert follower.last_refusal is not None
    assert "broadcast refused" in follower.last_refusal

    marker = seal_model_broadcast(key, _round(5), mode="dense", dim=DIM, sha256="").to_bytes()
    assert follower.take(topics.broadcast_topic(FLEET), marker) is None
    assert follower.mode == "dense"
    assert subscriptions.held == {topics.model_topic(FLEET)}


def test_follow_broadcast_reproduces_the_server_step_bit_for_bit() -> None:
    server = _Server(seed=11)
    server.step()
    server.step()
    x, g = server.params.copy(), server.state.g
    assert g is not None
    for _ in range(20):
        server.step()
        assert server.state.broadcast is not None
        x, g = follow_broadcast(x, g, server.state.broadcast, STEP, step=True)
        assert vector_digest(x) == vector_digest(server.params)
        assert server.state.g is not None
        assert vector_digest(g) == vector_digest(server.state.g)


# -- a fleet ------------------------------------------------------------------------------


def test_a_byz_ef21_bc_fleet_trains_on_broadcasts_a_fraction_of_the_dense_model(
    tmp_path: Path,
) -> None:
    devices, rounds = 4, 8
    summaries: list[RoundSummary] = []
    spec = FleetSpec(
        fleet=FLEET,
        broker_url="mqtt://in-memory:1",
        devices=devices,
        rounds=rounds,
        round_timeout_s=20.0,
        coordinator_overrides={
            "algorithm": "byz-ef21-bc",
            "method": {
                "step_size": 0.5,
                "compression": "top-k",
                "sparsity": 0.1,
                "downlink_sparsity": 0.05,
            },
        },
    )
    broker = InMemoryBroker()
    fleet = InProcessFleet(spec, tmp_path, on_round=summaries.append, transport=broker.connect)
    assert fleet.run() == 0

    assert [s.accepted for s in summaries] == [devices] * rounds
    accuracies = [s.validation_accuracy or 0.0 for s in summaries]
    assert accuracies[-1] > accuracies[0] + 0.2, accuracies
    dense_size = max(len(p) for t, p in broker.published if t == topics.model_topic(FLEET))
    broadcasts = [p for t, p in broker.published if t == topics.broadcast_topic(FLEET)]
    for agent in fleet.agents:
        follower = agent.downlink
        assert follower.refused == 0
        # Dense models in rounds 1-2 and one pair fetch; broadcasts from then on, and the
        # final model (dense again) at the end.
        assert follower.resyncs == 1
        assert follower.downlink_bytes < 0.6 * dense_size * (rounds + 1)
    # A delta broadcast at 5% of the coordinates is a small fraction of the dense model.
    assert min(len(p) for p in broadcasts) < 0.25 * dense_size
