"""Byz-Clip21-SGD2M: double momentum, clipping with error feedback, Gaussian noise."""

from __future__ import annotations

import numpy as np
import pytest

from byzedge.methods import Clip21SGD2M
from byzedge.methods.base import DeviceState, MethodMessage, Proposal, ServerState
from byzedge.methods.testing import LogisticOracle, run_rounds
from byzedge.models.datasets import load_digits_split

DEVICES = 6


@pytest.fixture(scope="module")
def problem() -> tuple[LogisticOracle, float, dict[str, LogisticOracle]]:
    split = load_digits_split()
    oracle = LogisticOracle(split.train_x, split.train_y, 10, l2=0.01)
    _, optimum = oracle.minimum()
    shards = {
        f"dev-{i}": LogisticOracle(split.train_x[i::DEVICES], split.train_y[i::DEVICES], 10, 0.01)
        for i in range(DEVICES)
    }
    return oracle, optimum, shards


def median(matrix: np.ndarray) -> np.ndarray:
    return np.median(matrix, axis=0).astype(np.float32)


def run(shards: dict[str, LogisticOracle], dim: int, noise: float, rounds: int):  # type: ignore[no-untyped-def]
    method = Clip21SGD2M(
        step_size=0.5,
        momentum1=0.9,
        momentum2=0.5,
        clip_norm=0.05,  # below the gradient norm (0.45 at the start): clipping is active
        dp_noise_multiplier=noise,
        batch_size=32,
        secret_noise=False,
    )
    return run_rounds(
        method, shards, np.zeros(dim, dtype=np.float32), rounds, aggregate=median, seed=3
    )


def test_without_noise_the_mirrors_are_beta_hat_sums_of_the_clipped_steps(
    problem: tuple[LogisticOracle, float, dict[str, LogisticOracle]],
) -> None:
    oracle, optimum, shards = problem
    trace = run(shards, oracle.dim, noise=0.0, rounds=150)
    for device, state in trace.devices.items():
        np.testing.assert_allclose(trace.server.mirrors[device], state.vectors["g"], atol=1e-5)
    first, last = oracle.loss(trace.models[0]) - optimum, oracle.loss(trace.params) - optimum
    assert last < first / 10


def test_noise_reaches_the_mirrors_but_not_the_device_estimators(
    problem: tuple[LogisticOracle, float, dict[str, LogisticOracle]],
) -> None:
    oracle, optimum, shards = problem
    # The mirrors integrate the noise (m_i = g_i + β̂ Σ noise, a random walk the device
    # never corrects), so a noisy run drifts over long horizons: compare over 50 rounds.
    quiet = run(shards, oracle.dim, noise=0.0, rounds=50)
    noisy = run(shards, oracle.dim, noise=0.1, rounds=50)
    gaps = {
        name: np.linalg.norm(trace.server.mirrors["dev-0"] - trace.devices["dev-0"].vectors["g"])
        for name, trace in (("quiet", quiet), ("noisy", noisy))
    }
    assert gaps["quiet"] < 1e-5
    assert gaps["noisy"] > 0.05
    quiet_gap = oracle.loss(quiet.params) - optimum
    noisy_gap = oracle.loss(noisy.params) - optimum
    assert noisy_gap > quiet_gap  # the price of privacy
    assert noisy_gap < (oracle.loss(noisy.models[0]) - optimum) / 2  # still learning


def test_a_message_is_the_clipped_step_plus_noise_of_the_stated_scale(
    problem: tuple[LogisticOracle, float, dict[str, LogisticOracle]],
) -> None:
    oracle, _, shards = problem
    method = Clip21SGD2M(clip_norm=0.01, dp_noise_multiplier=2.0, secret_noise=False)
    plan = method.plan(1, np.zeros(oracle.dim, np.float32), ServerState())
    proposal = method.propose(
        plan,
        np.zeros(oracle.dim, np.float32),
        None,
        shards["dev-0"],
        DeviceState(),
        device_id="dev-0",
        seed=11,
    )
    assert proposal is not None
    step = proposal.carry["u"]
    assert np.linalg.norm(step) == pytest.approx(0.01, rel=1e-5)  # clipped to τ
    noise = proposal.vector - step
    assert np.std(noise) == pytest.approx(2.0 * 0.01, rel=0.1)  # sigma * tau
    again = method.propose(
        plan,
        np.zeros(oracle.dim, np.float32),
        None,
        shards["dev-0"],
        DeviceState(),
        device_id="dev-0",
        seed=11,
    )
    assert again is not None
    np.testing.assert_array_equal(again.vector, proposal.vector)  # seeded: not secret


def test_secret_noise_is_not_reproducible_from_the_seed(
    problem: tuple[LogisticOracle, float, dict[str, LogisticOracle]],
) -> None:
    oracle, _, shards = problem
    method = Clip21SGD2M(dp_noise_multiplier=1.0)
    plan = method.plan(1, np.zeros(oracle.dim, np.float32), ServerState())
    vectors = []
    for _ in range(2):
        proposal = method.propose(
            plan,
            np.zeros(oracle.dim, np.float32),
            None,
            shards["dev-0"],
            DeviceState(),
            device_id="dev-0",
            seed=11,
        )
        assert proposal is not None
        vectors.append(proposal.vector)
    assert not np.array_equal(vectors[0], vectors[1])
    assert "secret_noise" not in plan.options


def test_commit_adds_beta_hat_times_the_unnoised_step() -> None:
    method = Clip21SGD2M(momentum2=0.75)
    plan = method.plan(1, np.zeros(2, np.float32), ServerState())
    state = DeviceState(vectors={"g": np.array([1.0, 0.0], np.float32)})
    sent = Proposal(
        np.array([9.0, 9.0], np.float32),  # step + noise
        MethodMessage("difference", None),
        carry={"v": np.array([1.0, 1.0], np.float32), "u": np.array([0.4, 0.8], np.float32)},
    )
    method.commit(plan, sent, sent.vector, state)
    np.testing.assert_allclose(state.vectors["g"], [1.1, 0.2])
    np.testing.assert_array_equal(state.vectors["v"], [1.0, 1.0])


def test_the_server_scales_messages_by_beta_hat_from_a_zero_mirror() -> None:
    method = Clip21SGD2M(momentum2=0.5)
    server = ServerState()
    plan = method.plan(1, np.zeros(2, np.float32), server)
    messages = {"a": (MethodMessage("difference", None), np.array([2.0, 4.0], np.float32))}
    ids, rows, dropped = method.rows(plan, messages, server)
    assert ids == ["a"]
    assert not dropped
    np.testing.assert_array_equal(rows[0], [1.0, 2.0])


def test_the_clipped_sgd_baseline_sends_clipped_momenta_and_keeps_them_unclipped(
    problem: tuple[LogisticOracle, float, dict[str, LogisticOracle]],
) -> None:
    from byzedge.methods.testing import MomentumSGD  # noqa: PLC0415

    oracle, _, shards = problem
    method = MomentumSGD(step_size=0.5, momentum1=0.0, clip_norm=0.01)
    plan = method.plan(1, np.zeros(oracle.dim, np.float32), ServerState())
    state = DeviceState()
    proposal = method.propose(
        plan, np.zeros(oracle.dim, np.float32), None, shards["dev-0"], state, device_id="d", seed=1
    )
    assert proposal is not None
    assert np.linalg.norm(proposal.vector) == pytest.approx(0.01, rel=1e-5)
    method.commit(plan, proposal, proposal.vector, state)
    assert np.linalg.norm(state.vectors["v"]) > 0.1  # the raw minibatch gradient
