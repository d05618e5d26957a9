"""Byz-EF21, Byz-EF21-BC and Byz-DASHA-PAGE: device estimators, server mirrors, resync."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from byzedge.coordinator.aggregation import build
from byzedge.methods import ByzDashaPage, ByzEF21, ByzEF21BC, build_method
from byzedge.methods.base import DeviceState, MethodMessage, Proposal, ServerState
from byzedge.methods.testing import LogisticOracle, RandK, TopK, run_rounds
from byzedge.models.datasets import load_digits_split

DEVICES = 10


@pytest.fixture(scope="module")
def problem() -> tuple[LogisticOracle, float, dict[str, LogisticOracle]]:
    split = load_digits_split()
    oracle = LogisticOracle(split.train_x, split.train_y, 10, l2=0.01)
    _, optimum = oracle.minimum()
    # Heterogeneous shards: each device holds a tenth of the training set.
    shards = {
        f"dev-{i:02d}": LogisticOracle(
            split.train_x[i::DEVICES], split.train_y[i::DEVICES], 10, l2=0.01
        )
        for i in range(DEVICES)
    }
    return oracle, optimum, shards


def bucketed_median():  # type: ignore[no-untyped-def]
    rule = build(
        "bucketing", inner="coordinate-median", bucket_size=2, max_byzantine_fraction=0.2, seed=0
    )
    return lambda matrix: rule(matrix).aggregate


def assert_mirrors_match(trace_devices: dict[str, DeviceState], server: ServerState) -> None:
    assert set(server.mirrors) == set(trace_devices)
    for device, state in trace_devices.items():
        np.testing.assert_allclose(server.mirrors[device], state.vectors["g"], rtol=0, atol=1e-6)
        assert server.mirror_rounds[device] == state.base_round


@pytest.mark.parametrize("name", ["byz-ef21", "byz-ef21-bc"])
def test_ef21_mirrors_equal_device_estimators_and_the_gap_falls(
    problem: tuple[LogisticOracle, float, dict[str, LogisticOracle]], name: str
) -> None:
    oracle, optimum, shards = problem
    method = build_method(name, step_size=0.5)
    trace = run_rounds(
        method,
        shards,
        np.zeros(oracle.dim, dtype=np.float32),
        120,
        aggregate=bucketed_median(),
        compress=TopK(0.1),
    )
    assert_mirrors_match(trace.devices, trace.server)
    first, last = oracle.loss(trace.models[0]) - optimum, oracle.loss(trace.params) - optimum
    assert last < first / 15


def test_ef21_bc_broadcast_is_sparse_after_the_first_round() -> None:
    method = ByzEF21BC(downlink_sparsity=0.25, step_size=1.0)
    server = ServerState()
    plan = method.plan(1, np.zeros(8, np.float32), server)
    method.apply(plan, np.zeros(8, np.float32), np.arange(8, dtype=np.float32), server)
    assert method.last_downlink_bytes == 32  # the first broadcast is dense
    plan = method.plan(2, np.zeros(8, np.float32), server)
    target = np.arange(8, dtype=np.float32) + np.array([0, 0, 0, 0, 0, 0, 5, -7], np.float32)
    new = method.apply(plan, np.zeros(8, np.float32), target, server)
    assert method.last_downlink_bytes == 16  # two coordinates kept, value and index
    assert server.g is not None
    np.testing.assert_array_equal(server.g, target)  # the difference was exactly 2-sparse
    np.testing.assert_array_equal(new, -target)


def test_ef21_resync_after_a_lost_message_restores_equality(
    problem: tuple[LogisticOracle, float, dict[str, LogisticOracle]],
) -> None:
    oracle, _, shards = problem
    method = ByzEF21(step_size=0.5)
    server = ServerState()
    states = {device: DeviceState() for device in shards}
    params = np.zeros(oracle.dim, dtype=np.float32)
    compress = TopK(0.1)
    lost = "dev-03"
    dropped_seen: dict[int, dict[str, str]] = {}
    resync_seen: dict[int, frozenset[str]] = {}
    kinds_of_lost: dict[int, str] = {}
    for round_number in range(1, 6):
        plan = method.plan(round_number, params, server)
        resync_seen[round_number] = plan.resync
        messages: dict[str, tuple[MethodMessage, NDArray[np.float32]]] = {}
        for device, local in shards.items():
            proposal = method.propose(
                plan, params, None, local, states[device], device_id=device, seed=round_number
            )
            assert proposal is not None
            sent = proposal.vector if proposal.dense else compress(proposal.vector, 0, device)[0]
            method.commit(plan, proposal, sent, states[device])
            if device == lost:
                kinds_of_lost[round_number] = proposal.message.kind
            if device == lost and round_number == 2:
                continue  # committed on the device, never reached the server
            messages[device] = (proposal.message, sent)
        _, rows, dropped = method.rows(plan, messages, server)
        dropped_seen[round_number] = dropped
        params = method.apply(plan, params, np.median(np.stack(rows), axis=0), server)
    assert kinds_of_lost == {
        1: "reset",
        2: "difference",
        3: "difference",
        4: "reset",
        5: "difference",
    }
    assert set(dropped_seen[3]) == {lost}  # its base round 2 is not the mirror's round 1
    assert resync_seen[4] == frozenset({lost})
    assert not dropped_seen[4]
    assert not dropped_seen[5]
    assert not server.resync
    for device, state in states.items():
        np.testing.assert_allclose(server.mirrors[device], state.vectors["g"], atol=1e-6)


def test_a_skipped_round_leaves_the_mirror_valid(
    problem: tuple[LogisticOracle, float, dict[str, LogisticOracle]],
) -> None:
    oracle, _, shards = problem
    trace = run_rounds(
        ByzEF21(step_size=0.5),
        shards,
        np.zeros(oracle.dim, dtype=np.float32),
        12,
        aggregate=bucketed_median(),
        compress=TopK(0.1),
        skip=lambda r, d: d == "dev-01" and r in (4, 5, 9),
    )
    assert not trace.server.resync
    assert trace.server.mirror_rounds["dev-01"] == 12
    assert_mirrors_match(trace.devices, trace.server)


def test_a_difference_without_a_mirror_is_dropped_and_listed_for_resync() -> None:
    method = ByzEF21()
    server = ServerState()
    plan = method.plan(1, np.zeros(2, np.float32), server)
    messages = {"x": (MethodMessage("difference", 7), np.ones(2, np.float32))}
    ids, rows, dropped = method.rows(plan, messages, server)
    assert ids == []
    assert rows == []
    assert "x" in dropped
    assert method.plan(2, np.zeros(2, np.float32), server).resync == frozenset({"x"})


def test_dasha_never_sends_dense_after_its_reset_and_mirrors_match(
    problem: tuple[LogisticOracle, float, dict[str, LogisticOracle]],
) -> None:
    oracle, optimum, shards = problem
    compress = RandK(0.1, shared=True)
    omega = compress.omega(oracle.dim)
    method = build_method(
        "byz-dasha-page",
        step_size=0.5,
        full_gradient_probability=0.1,
        compression_omega=omega,
        batch_size=32,
    )
    trace = run_rounds(
        method,
        shards,
        np.zeros(oracle.dim, dtype=np.float32),
        120,
        aggregate=bucketed_median(),
        compress=compress,
    )
    assert trace.sent[0] == {"reset": DEVICES}
    assert trace.dense_after_first == 0
    assert all(set(kinds) == {"difference"} for kinds in trace.sent[1:])
    assert_mirrors_match(trace.devices, trace.server)
    first, last = oracle.loss(trace.models[0]) - optimum, oracle.loss(trace.params) - optimum
    assert last < first / 5


def test_dasha_momentum_defaults_to_one_over_two_omega_plus_one() -> None:
    assert ByzDashaPage(compression_omega=9.0).dasha_momentum == pytest.approx(1 / 19)
    assert ByzDashaPage(sparsity=0.1).dasha_momentum == pytest.approx(1 / 19)
    assert ByzDashaPage().dasha_momentum == 1.0
    assert ByzDashaPage(dasha_momentum=0.3, compression_omega=9.0).dasha_momentum == 0.3


def test_dasha_commit_moves_h_to_the_new_page_estimator() -> None:
    method = ByzDashaPage(dasha_momentum=0.5, reference_update_frequency=100)
    server = ServerState(g=np.zeros(2, np.float32))
    plan = method.plan(2, np.zeros(2, np.float32), server)
    state = DeviceState(
        vectors={"h": np.array([1.0, 1.0], np.float32), "g": np.array([3.0, 1.0], np.float32)},
        base_round=1,
    )
    proposal = Proposal(
        np.array([0.0, 0.0], np.float32),
        MethodMessage("difference", 1),
        carry={"h": np.array([2.0, 0.0], np.float32)},
    )
    method.commit(plan, proposal, np.array([0.5, -0.5], np.float32), state)
    np.testing.assert_array_equal(state.vectors["h"], [2.0, 0.0])
    np.testing.assert_array_equal(state.vectors["g"], [3.5, 0.5])
    assert state.base_round == 2
