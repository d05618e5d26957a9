"""Training methods run by the real agent and coordinator daemons, over the in-memory broker.

The same :class:`~byzedge.edge_agent.service.Agent` and
:class:`~byzedge.coordinator.service.Coordinator` an operator runs, with the transport seam
swapped for :class:`~byzedge.daemon.transport.InMemoryBroker`: the round plan travels in the
signed manifest, each device's step runs on its own data with torch, method messages are
sealed, ingested and aggregated by the round engine, and both sides persist their state.
(The same over mosquitto with mutual TLS and SIGKILLs: tests/integration/test_method_fleet.py.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from byzedge.coordinator.config import CoordinatorConfig
from byzedge.coordinator.service import RoundSummary
from byzedge.coordinator.state import StateStore
from byzedge.daemon.store import AtomicStore
from byzedge.daemon.transport import InMemoryBroker
from byzedge.fleet_sim.fleet import FleetSpec, InProcessFleet, device_ids
from byzedge.methods import METHODS
from byzedge.methods.base import DeviceState, ServerState
from byzedge.models import get_model_spec

DEVICES = 4
# The methods with server mirrors, each with a compressor of the class it needs.
MIRRORED = (
    ("byz-ef21", "top-k"),
    ("byz-ef21-bc", "top-k"),
    ("byz-dasha-page", "rand-k"),
    # Clip21-SGD2M's device keeps its un-noised, uncompressed step (Islamov et al. 2026,
    # Alg. 1): its mirror equals it only without noise and compression.
    ("clip21-sgd2m", "dense"),
)


def _run(
    workdir: Path, algorithm: str, rounds: int, broker: InMemoryBroker, **method: object
) -> list[RoundSummary]:
    summaries: list[RoundSummary] = []
    spec = FleetSpec(
        fleet="methods",
        broker_url="mqtt://in-memory:1",
        devices=DEVICES,
        rounds=rounds,
        round_timeout_s=20.0,
        coordinator_overrides={
            "algorithm": algorithm,
            "method": {"step_size": 0.5, **method},
        },
    )
    fleet = InProcessFleet(spec, workdir, on_round=summaries.append, transport=broker.connect)
    assert fleet.run() == 0
    return summaries


def _server_state(workdir: Path) -> ServerState:
    state = StateStore(workdir / "coordinator").load()
    assert state is not None
    return ServerState.from_plain(state.method, get_model_spec("mlp").dim)


def _device_state(workdir: Path, device: str) -> DeviceState:
    document = AtomicStore(workdir / "agents" / device / "agent.state").load()
    assert document is not None
    return DeviceState.from_plain(document["method"]["state"], get_model_spec("mlp").dim)


@pytest.mark.parametrize("algorithm", sorted(METHODS))
def test_every_method_trains_the_fleet_over_the_protocol(tmp_path: Path, algorithm: str) -> None:
    # Clip21-SGD2M with a faster momentum than its default, to learn within six rounds.
    fast = {"clip_norm": 5.0, "momentum1": 0.5, "momentum2": 0.5}
    options = fast if algorithm == "clip21-sgd2m" else {}
    summaries = _run(tmp_path, algorithm, 6, InMemoryBroker(), **options)

    assert [s.round for s in summaries] == [1, 2, 3, 4, 5, 6]
    assert all(s.algorithm == algorithm for s in summaries)
    assert [s.accepted for s in summaries] == [DEVICES] * 6
    assert all(not s.method_dropped and not s.rejected for s in summaries)
    accuracies = [s.validation_accuracy for s in summaries]
    assert accuracies[0] is not None
    assert accuracies[-1] is not None
    assert accuracies[-1] > accuracies[0] + 0.2, accuracies


@pytest.mark.parametrize(("algorithm", "compression"), MIRRORED)
def test_server_mirrors_equal_the_devices_estimators_across_restarts(
    tmp_path: Path, algorithm: str, compression: str
) -> None:
    # Two runs on the same folders: every daemon restarts from its state file in between.
    broker = InMemoryBroker()
    first = _run(tmp_path, algorithm, 3, broker, compression=compression, sparsity=0.1)
    second = _run(tmp_path, algorithm, 6, broker, compression=compression, sparsity=0.1)

    assert [s.round for s in first + second] == [1, 2, 3, 4, 5, 6]
    assert all(not s.method_dropped for s in second)  # no resync was needed
    server = _server_state(tmp_path)
    assert sorted(server.mirrors) == device_ids(DEVICES)
    assert set(server.mirror_rounds.values()) == {6}
    for device in device_ids(DEVICES):
        estimator = _device_state(tmp_path, device).vectors["g"]
        np.testing.assert_array_equal(server.mirrors[device], estimator)


def test_marina_runs_full_rounds_then_compressed_differences(tmp_path: Path) -> None:
    summaries = _run(
        tmp_path,
        "byz-vr-marina",
        6,
        InMemoryBroker(),
        compression="rand-k",
        sparsity=0.1,
        reference_update_frequency=3,
    )

    # Round 1 (no estimator yet) and every third round are full-gradient rounds.
    assert [s.full_round for s in summaries] == [True, False, True, False, False, True]
    full, compressed = summaries[0].uplink_bytes, summaries[1].uplink_bytes
    assert compressed < full / 5  # rand-k at 10%, no indices sent


def test_coordinator_config_rejects_a_compressor_of_the_wrong_class(tmp_path: Path) -> None:
    base = {
        "fleet": "f",
        "signing_key": tmp_path / "k",
        "devices_dir": tmp_path,
        "state_dir": tmp_path,
    }
    with pytest.raises(ValueError, match="needs an unbiased compressor"):
        CoordinatorConfig.model_validate(
            {**base, "algorithm": "byz-vr-marina", "method": {"compression": "top-k"}}
        )
    with pytest.raises(ValueError, match="needs an contractive compressor"):
        CoordinatorConfig.model_validate(
            {**base, "algorithm": "byz-ef21", "method": {"compression": "rand-k"}}
        )
    assert CoordinatorConfig.model_validate(
        {**base, "algorithm": "byz-ef21", "method": {"compression": "top-k"}}
    )


def test_byzantine_defense_naming_a_method_selects_it_with_bucketed_median(
    tmp_path: Path,
) -> None:
    config = CoordinatorConfig.model_validate(
        {
            "fleet": "f",
            "signing_key": tmp_path / "k",
            "devices_dir": tmp_path,
            "state_dir": tmp_path,
            "byzantine_defense": "byz-vr-marina",
        }
    )

    assert config.algorithm == "byz-vr-marina"
    assert config.byzantine_defense == "bucketing"
    assert config.aggregation_config.inner == "coordinate-median"
    assert config.aggregation_config.bucket_size == 2


def test_unknown_algorithm_and_foreign_options_are_config_errors(tmp_path: Path) -> None:
    base = {
        "fleet": "f",
        "signing_key": tmp_path / "k",
        "devices_dir": tmp_path,
        "state_dir": tmp_path,
    }
    with pytest.raises(ValueError, match="unknown algorithm 'sgd'"):
        CoordinatorConfig.model_validate({**base, "algorithm": "sgd"})
    with pytest.raises(ValueError, match="clip_norm"):
        CoordinatorConfig.model_validate(
            {**base, "algorithm": "byz-vr-marina", "method": {"clip_norm": 1.0}}
        )
