"""The leader's round state shared through a real three-node NATS cluster's JetStream.

A standby on another machine (here: another state folder) must resume from the state the
last leader saved, a deposed leader must not overwrite its successor's, and a node's death
must not stop saves. Each test starts its own cluster on free loopback ports.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from byzedge.coordinator.cluster.contracts import LeaseLostError
from byzedge.coordinator.cluster.nats_state import JetStreamStateStore, SharedStateError
from byzedge.coordinator.state import CoordinatorState, StateStore
from byzedge.fleet_sim.nats_cluster import NatsCluster

pytestmark = pytest.mark.broker

FLEET = "shared"


def _state(completed_round: int, seed: int = 0) -> CoordinatorState:
    return CoordinatorState(
        fleet=FLEET,
        model="mlp",
        completed_round=completed_round,
        model_version=completed_round,
        params=np.random.default_rng(seed).normal(size=64).astype(np.float32),
        reputation={"dev-000": 0.9, "dev-001": 0.4},
        rejected_total={"bad-signature": 2},
    )


@pytest.fixture
def stores(nats_cluster: NatsCluster) -> Iterator[list[JetStreamStateStore]]:
    made: list[JetStreamStateStore] = []
    yield made
    for store in made:
        store.close()


def _store(
    cluster: NatsCluster, folder: Path, epoch: int, made: list[JetStreamStateStore]
) -> JetStreamStateStore:
    # Generous: on a loaded machine a stream leader election after a node kill takes a
    # while, and both a save and a load wait it out.
    store = JetStreamStateStore(
        StateStore(folder),
        cluster.nats_urls,
        FLEET,
        epoch=epoch,
        save_timeout_s=90.0,
        load_timeout_s=90.0,
    )
    made.append(store)
    return store


def test_a_standby_elsewhere_resumes_from_the_state_the_leader_saved(
    nats_cluster: NatsCluster, stores: list[JetStreamStateStore], tmp_path: Path
) -> None:
    leader = _store(nats_cluster, tmp_path / "machine-a", epoch=3, made=stores)
    assert leader.load() is None  # nothing anywhere yet
    saved = _state(7, seed=1)
    leader.save(saved)

    standby = _store(nats_cluster, tmp_path / "machine-b", epoch=4, made=stores)
    resumed = standby.load()

    assert resumed is not None
    assert (resumed.completed_round, resumed.model_version) == (7, 7)
    np.testing.assert_array_equal(resumed.params, saved.params)
    assert resumed.reputation == saved.reputation
    assert resumed.rejected_total == saved.rejected_total
    assert not (tmp_path / "machine-b" / "coordinator.state").exists()


def test_the_local_file_wins_when_it_is_further_along(
    nats_cluster: NatsCluster, stores: list[JetStreamStateStore], tmp_path: Path
) -> None:
    store = _store(nats_cluster, tmp_path / "a", epoch=1, made=stores)
    store.save(_state(2))
    # A later round saved locally only (the cluster was out of reach then).
    StateStore(tmp_path / "a").save(_state(3, seed=5))

    loaded = store.load()

    assert loaded is not None
    assert loaded.completed_round == 3


def test_a_deposed_leader_cannot_overwrite_its_successors_state(
    nats_cluster: NatsCluster, stores: list[JetStreamStateStore], tmp_path: Path
) -> None:
    old = _store(nats_cluster, tmp_path / "old", epoch=5, made=stores)
    old.save(_state(4))
    new = _store(nats_cluster, tmp_path / "new", epoch=9, made=stores)
    new.save(_state(5, seed=2))

    with pytest.raises(LeaseLostError, match="epoch 9"):
        old.save(_state(6, seed=3))

    survivor = _store(nats_cluster, tmp_path / "third", epoch=10, made=stores).load()
    assert survivor is not None
    assert survivor.completed_round == 5


def test_saves_go_on_when_a_node_dies(
    nats_cluster: NatsCluster, stores: list[JetStreamStateStore], tmp_path: Path
) -> None:
    store = _store(nats_cluster, tmp_path / "a", epoch=1, made=stores)
    store.save(_state(1))
    nats_cluster.node(nats_cluster.nodes[0].name).kill()

    store.save(_state(2, seed=4))  # the stream keeps a quorum with two of three replicas

    resumed = _store(nats_cluster, tmp_path / "b", epoch=2, made=stores).load()
    assert resumed is not None
    assert resumed.completed_round == 2


def test_no_cluster_is_an_error_not_a_silent_fresh_start(tmp_path: Path) -> None:
    store = JetStreamStateStore(
        StateStore(tmp_path), ["nats://127.0.0.1:9"], FLEET, epoch=1, load_timeout_s=1.0
    )
    try:
        with pytest.raises(SharedStateError, match="no NATS cluster"):
            store.load()
    finally:
        store.close()
