"""Byz-VR-MARINA with rand-k under the bucketed coordinate median needs a round-shared support.

With each device drawing its own coordinates, every coordinate's median is taken over
rows that mostly do not carry it, and the estimator goes stale (methods.md, finding 1).
The coordinator's ``[method] rand_k_support`` is ``"round"`` by default, and so is the
simulator's for a training method.
"""

from __future__ import annotations

import pytest

from byzedge.fleet_sim.scenario import Scenario
from byzedge.fleet_sim.simulator import run_scenario

pytestmark = pytest.mark.slow


def _marina(support: str) -> float:
    scenario = Scenario(
        devices=20,
        rounds=60,
        algorithm="byz-vr-marina",
        defense="bucketing",
        compression="rand-k",
        sparsity=0.1,
        method={"step_size": 0.2, "full_gradient_probability": 0.1, "rand_k_support": support},
        anomaly_detection=False,
        device_reputation=False,
        eval_every=60,
        seed=0,
    )
    accuracy = run_scenario(scenario).final_accuracy
    assert accuracy is not None
    return accuracy


def test_a_round_shared_support_trains_where_per_device_supports_stall() -> None:
    shared, per_device = _marina("round"), _marina("device")

    assert shared > 0.8
    assert shared > per_device + 0.3, (shared, per_device)
