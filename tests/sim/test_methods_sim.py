"""Every training method in the in-memory simulator: real torch gradients, pipeline, ingest."""

from __future__ import annotations

from typing import Any

import pytest

from byzedge.fleet_sim.scenario import METHOD_DEFENSE, Scenario
from byzedge.fleet_sim.simulator import Simulator, run_scenario

BASE: dict[str, Any] = {
    "devices": 6,
    "rounds": 24,
    "eval_every": 8,
    "anomaly_detection": False,
    "device_reputation": False,
}

CASES = {
    "byz-vr-marina": ({"step_size": 0.5, "full_gradient_probability": 0.2}, "dense"),
    "byz-vr-marina-pp": ({"step_size": 0.5, "full_gradient_probability": 0.2}, "dense"),
    "byz-ef21": ({"step_size": 0.5}, "top-k"),
    "byz-ef21-bc": ({"step_size": 0.5}, "top-k"),
    "byz-dasha-page": ({"step_size": 0.5}, "rand-k"),
    "clip21-sgd2m": (
        {"step_size": 0.5, "clip_norm": 1.0, "momentum1": 0.5, "momentum2": 0.5},
        "dense",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_method_learns_digits_far_above_chance(name: str) -> None:
    options, compression = CASES[name]
    scenario = Scenario.model_validate(
        {**BASE, "algorithm": name, "method": options, "compression": compression}
    )
    result = run_scenario(scenario)
    assert result.final_accuracy is not None
    assert result.final_accuracy > 0.75  # chance is 0.1
    assert all(r.method_dropped == 0 for r in result.rounds)
    assert all(r.accepted == 6 for r in result.rounds)


def test_marina_under_sign_flip_with_bucketed_median_keeps_learning() -> None:
    scenario = Scenario.model_validate(
        {
            **BASE,
            "devices": 10,
            "defense": "byz-vr-marina",  # the seed's spelling
            "method": {"step_size": 0.5, "full_gradient_probability": 0.2},
            "attack": "sign-flip",
            "byzantine_fraction": 0.2,
        }
    )
    assert scenario.algorithm == "byz-vr-marina"
    assert scenario.defense == METHOD_DEFENSE
    result = run_scenario(scenario)
    assert len(result.compromised) == 2
    assert result.final_accuracy is not None
    assert result.final_accuracy > 0.75


def test_marina_pp_full_rounds_ask_every_device_and_others_a_cohort() -> None:
    scenario = Scenario.model_validate(
        {
            **BASE,
            "devices": 8,
            "rounds": 12,
            "devices_per_round": 3,
            "algorithm": "byz-vr-marina-pp",
            "method": {"step_size": 0.5, "reference_update_frequency": 4},
        }
    )
    result = run_scenario(scenario)
    sizes = {r.round: (r.full_round, r.cohort_size) for r in result.rounds}
    assert sizes[1] == (True, 8)
    assert sizes[4] == (True, 8)
    assert sizes[8] == (True, 8)
    assert sizes[2] == (False, 3)
    assert sizes[5] == (False, 3)


def test_dasha_uplink_is_compressed_after_the_first_round() -> None:
    scenario = Scenario.model_validate(
        {
            **BASE,
            "rounds": 4,
            "algorithm": "byz-dasha-page",
            "compression": "rand-k",
            "sparsity": 0.01,
        }
    )
    simulator = Simulator(scenario)
    # DASHA's momentum from the codec's omega at this model's size (d/K - 1 and rounding).
    assert simulator.method is not None
    assert simulator.method.plan_options()["dasha_momentum"] < 0.01
    result = simulator.run()
    first, *later = [r.uplink_bytes for r in result.rounds]
    assert first is not None
    assert all(b is not None and b * 20 < first for b in later)


def test_a_method_refuses_a_codec_of_the_wrong_class() -> None:
    # Refused when the scenario is read, with the coordinator's message.
    with pytest.raises(ValueError, match="unbiased"):
        Scenario.model_validate({**BASE, "algorithm": "byz-vr-marina", "compression": "top-k"})


def test_fedavg_stays_the_default() -> None:
    scenario = Scenario.model_validate(BASE)
    assert scenario.algorithm == "fedavg"
    assert scenario.defense == "clipping-vr"
    assert Simulator(scenario).method is None


def test_sim_run_takes_the_algorithm_from_the_command_line(tmp_path: Any) -> None:
    import json  # noqa: PLC0415

    from byzedge.commands.sim import main  # noqa: PLC0415

    path = tmp_path / "scenario.toml"
    path.write_text(
        'devices = 4\nrounds = 3\ncompression = "top-k"\nanomaly_detection = false\n'
        "method = { step_size = 0.5 }\n"
    )
    out = tmp_path / "out"
    assert main(["run", str(path), "--algorithm", "byz-ef21", "--out", str(out)]) == 0
    document = json.loads((out / "result.json").read_text())
    assert document["scenario"]["algorithm"] == "byz-ef21"
    assert document["scenario"]["defense"] == METHOD_DEFENSE
    assert main(["run", str(path), "--algorithm", "marina", "--out", str(out)]) == 2
