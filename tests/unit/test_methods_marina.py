"""Byz-VR-MARINA and -PP on l2-regularised logistic regression (digits, homogeneous data)."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from byzedge.coordinator.aggregation import build
from byzedge.methods import ByzVRMarina, ByzVRMarinaPP, build_method
from byzedge.methods.base import DeviceState, MethodMessage, ServerState
from byzedge.methods.testing import LogisticOracle, RandK, run_rounds
from byzedge.models.datasets import load_digits_split

HONEST = 8
BYZANTINE = 2


@pytest.fixture(scope="module")
def problem() -> tuple[LogisticOracle, float]:
    split = load_digits_split()
    oracle = LogisticOracle(split.train_x, split.train_y, 10, l2=0.01)
    _, optimum = oracle.minimum()
    return oracle, optimum


def bucketed_median() -> object:
    rule = build(
        "bucketing",
        inner="coordinate-median",
        bucket_size=2,
        max_byzantine_fraction=0.2,
        seed=0,
    )
    return lambda matrix: rule(matrix).aggregate


def devices(oracle: LogisticOracle) -> dict[str, LogisticOracle]:
    # Homogeneous (ζ = 0): every device holds the whole training set, as in Fig. 1.
    return {f"dev-{i:02d}": oracle for i in range(HONEST + BYZANTINE)}


def byzantine() -> list[str]:
    return [f"dev-{i:02d}" for i in range(HONEST, HONEST + BYZANTINE)]


def bit_flip(honest: NDArray[np.float32], f: int, rng: np.random.Generator) -> NDArray[np.float32]:
    # Each Byzantine sends the negation of an honest estimator (its own, on IID data).
    return -honest[rng.choice(len(honest), size=f)]


def alie(honest: NDArray[np.float32], f: int, rng: np.random.Generator) -> NDArray[np.float32]:
    # n = 10, f = 2: s = floor(n/2 + 1) - f = 4, z = Φ⁻¹((n - f - s)/(n - f)) = Φ⁻¹(0.5) = 0;
    # use the byzfl flavour τ = 1.5, which is stronger.
    return np.tile(honest.mean(axis=0) - 1.5 * honest.std(axis=0, ddof=1), (f, 1))


def gaps(oracle: LogisticOracle, optimum: float, models: list[NDArray[np.float32]]) -> list[float]:
    return [oracle.loss(x) - optimum for x in models]


@pytest.mark.parametrize("attack", [None, bit_flip, alie], ids=["no-attack", "bit-flip", "alie"])
def test_marina_drives_the_optimality_gap_down_under_attack(
    problem: tuple[LogisticOracle, float], attack: object
) -> None:
    oracle, optimum = problem
    method = build_method(
        "byz-vr-marina", step_size=0.5, full_gradient_probability=0.05, batch_size=32
    )
    trace = run_rounds(
        method,
        devices(oracle),
        np.zeros(oracle.dim, dtype=np.float32),
        150,
        aggregate=bucketed_median(),  # type: ignore[arg-type]
        compress=RandK(0.1, shared=True),
        byzantine=byzantine(),
        attack=attack,  # type: ignore[arg-type]
    )
    gap = gaps(oracle, optimum, trace.models)
    assert gap[0] > 1.5
    assert gap[50] < gap[0] / 10
    assert gap[150] < gap[50] / 3
    assert gap[150] < 0.02


def test_marina_first_round_is_full_and_coins_repeat_by_seed_and_round() -> None:
    method = ByzVRMarina(full_gradient_probability=0.3, seed=5)
    state = ServerState()
    params = np.zeros(4, dtype=np.float32)
    first = method.plan(1, params, state)
    assert first.full
    assert first.previous_sha256 is None
    state.g = np.zeros(4, dtype=np.float32)
    coins = [method.plan(r, params, state).full for r in range(2, 60)]
    again = [method.plan(r, params, state).full for r in range(2, 60)]
    assert coins == again
    assert 0 < sum(coins) < len(coins)


def test_marina_reference_update_frequency_makes_every_kth_round_full() -> None:
    method = ByzVRMarina(reference_update_frequency=4)
    state = ServerState(g=np.zeros(2, dtype=np.float32))
    params = np.zeros(2, dtype=np.float32)
    fulls = [r for r in range(1, 13) if method.plan(r, params, state).full]
    assert fulls == [4, 8, 12]


def test_marina_device_without_the_previous_model_waits_for_the_next_full_round(
    problem: tuple[LogisticOracle, float],
) -> None:
    oracle, _ = problem
    method = ByzVRMarina(reference_update_frequency=3)
    server = ServerState()
    device = DeviceState()
    x1 = np.zeros(oracle.dim, dtype=np.float32)
    plan1 = method.plan(1, x1, server)  # full (no g yet)
    proposal = method.propose(plan1, x1, None, oracle, device, device_id="d", seed=1)
    assert proposal is not None
    assert proposal.message.kind == "full"
    assert proposal.dense
    server.g = np.asarray(proposal.vector)
    x2 = method.apply(plan1, x1, proposal.vector, server)
    plan2 = method.plan(2, x2, server)  # a difference round
    assert not plan2.full
    # The device missed x1 (say it was offline): it cannot difference, so it waits.
    assert method.propose(plan2, x2, None, oracle, device, device_id="d", seed=2) is None
    with_previous = method.propose(plan2, x2, x1, oracle, device, device_id="d", seed=2)
    assert with_previous is not None
    assert with_previous.message.kind == "difference"
    assert not with_previous.dense
    x3 = method.apply(plan2, x2, server.g, server)
    plan3 = method.plan(3, x3, server)  # full again: no previous model needed
    assert plan3.full
    full = method.propose(plan3, x3, None, oracle, device, device_id="d", seed=3)
    assert full is not None
    assert full.message.kind == "full"


def test_marina_rows_add_g_to_differences_and_drop_the_wrong_kind() -> None:
    method = ByzVRMarina(reference_update_frequency=100)
    server = ServerState(g=np.array([1.0, 2.0], dtype=np.float32))
    plan = method.plan(2, np.zeros(2, dtype=np.float32), server)
    assert not plan.full
    messages = {
        "a": (MethodMessage("difference", 1), np.array([0.5, -1.0], dtype=np.float32)),
        "b": (MethodMessage("full", 1), np.array([9.0, 9.0], dtype=np.float32)),
    }
    ids, rows, dropped = method.rows(plan, messages, server)
    assert ids == ["a"]
    np.testing.assert_array_equal(rows[0], [1.5, 1.0])
    assert set(dropped) == {"b"}


def test_marina_apply_steps_with_the_aggregate_as_the_new_estimator() -> None:
    method = ByzVRMarina(step_size=0.5)
    server = ServerState()
    plan = method.plan(1, np.zeros(2, dtype=np.float32), server)
    new = method.apply(
        plan, np.array([1.0, 1.0], np.float32), np.array([2.0, -2.0], np.float32), server
    )
    np.testing.assert_array_equal(new, [0.0, 2.0])
    assert server.g is not None
    np.testing.assert_array_equal(server.g, [2.0, -2.0])


def test_marina_pp_clips_differences_to_the_step_length_and_accumulates_g() -> None:
    method = ByzVRMarinaPP(clip_multiplier=2.0, step_size=1.0, reference_update_frequency=100)
    server = ServerState(g=np.array([0.0, 1.0], dtype=np.float32))
    method.plan(1, np.zeros(2, dtype=np.float32), server)
    plan = method.plan(2, np.array([0.0, 0.5], dtype=np.float32), server)  # ||x2 - x1|| = 0.5
    assert not plan.full
    assert not method.asks_everyone(plan)
    assert method.radius(server) == pytest.approx(1.0)
    messages = {
        "big": (MethodMessage("difference", 1), np.array([30.0, 40.0], dtype=np.float32)),
        "small": (MethodMessage("difference", 1), np.array([0.3, 0.4], dtype=np.float32)),
    }
    ids, rows, dropped = method.rows(plan, messages, server)
    assert ids == ["big", "small"]
    assert not dropped
    np.testing.assert_allclose(rows[0], [0.6, 0.8], rtol=1e-6)  # clipped to λ = 1
    np.testing.assert_allclose(rows[1], [0.3, 0.4], rtol=1e-6)  # inside the ball, unchanged
    new = method.apply(
        plan, np.array([0.0, 0.5], np.float32), np.array([0.1, 0.0], np.float32), server
    )
    assert server.g is not None
    np.testing.assert_allclose(server.g, [0.1, 1.0], rtol=1e-6)  # g + aggregate
    np.testing.assert_allclose(new, [-0.1, -0.5], rtol=1e-6)


def test_marina_pp_full_rounds_ask_everyone_and_reset_g() -> None:
    method = ByzVRMarinaPP()
    server = ServerState()
    plan = method.plan(1, np.zeros(2, dtype=np.float32), server)
    assert plan.full
    assert method.asks_everyone(plan)
    server.g = np.array([5.0, 5.0], dtype=np.float32)
    method.apply(plan, np.zeros(2, np.float32), np.array([1.0, 2.0], np.float32), server)
    np.testing.assert_array_equal(server.g, [1.0, 2.0])


def test_marina_pp_converges_when_a_sampled_cohort_is_byzantine_heavy(
    problem: tuple[LogisticOracle, float],
) -> None:
    # Every round but the full ones, only 3 of 10 devices answer, sometimes 2 of them
    # Byzantine (shift-back-like: they push g back by a huge step). Clipping bounds them.
    oracle, optimum = problem
    rng = np.random.default_rng(0)
    cohorts = {r: set(rng.choice(HONEST + BYZANTINE, size=3, replace=False)) for r in range(200)}
    method = build_method(
        "byz-vr-marina-pp", step_size=0.5, reference_update_frequency=25, clip_multiplier=1.0
    )

    def skip(round_number: int, device: str) -> bool:
        plan_full = round_number == 1 or round_number % 25 == 0
        return not plan_full and int(device[-2:]) not in cohorts[round_number]

    def push_back(
        honest: NDArray[np.float32], f: int, _: np.random.Generator
    ) -> NDArray[np.float32]:
        return np.tile(-100.0 * honest.mean(axis=0), (f, 1))

    trace = run_rounds(
        method,
        devices(oracle),
        np.zeros(oracle.dim, dtype=np.float32),
        150,
        aggregate=lambda m: np.median(m, axis=0).astype(np.float32),
        byzantine=byzantine(),
        attack=push_back,
        attack_on="messages",
        skip=skip,
    )
    gap = gaps(oracle, optimum, trace.models)
    assert gap[150] < gap[0] / 20
