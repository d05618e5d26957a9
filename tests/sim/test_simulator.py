"""The in-memory simulator: real training, pipeline, ingest and server step, no broker."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from byzedge.cli import main
from byzedge.coordinator.aggregation.clipping_vr import ClippingVR
from byzedge.coordinator.round_engine import sample_cohort
from byzedge.faults import ATTACKS, SENSOR_FAULTS
from byzedge.fleet_sim.matrix import CELL_KEYS
from byzedge.fleet_sim.scenario import Scenario, load_scenario
from byzedge.fleet_sim.simulator import (
    FlagCounts,
    Simulator,
    _build_defense,
    flag_counts,
    omniscient_attacks,
    run_scenario,
)

PROTOCOL_ATTACKS = sorted({"garbage-payload", "bad-signature", "sybil"} & set(ATTACKS))


def test_tiny_simulation_reports_an_accuracy_per_round() -> None:
    result = run_scenario(Scenario(devices=8, rounds=3))
    assert len(result.rounds) == 3
    assert all(a is not None and 0.0 <= a <= 1.0 for a in result.accuracies)
    assert all(r.accepted == 8 and not r.rejected for r in result.rounds)


def test_clean_iid_fleet_learns_digits() -> None:
    result = run_scenario(Scenario(devices=10, rounds=10, defense="mean"))
    assert result.final_accuracy is not None
    assert result.final_accuracy > 0.85


def test_sign_flip_breaks_mean_but_not_clipping_vr() -> None:
    attacked = Scenario(devices=10, rounds=6, attack="sign-flip", byzantine_fraction=0.3)
    mean = run_scenario(attacked.with_changes(defense="mean"))
    clipped = run_scenario(attacked.with_changes(defense="clipping-vr"))
    assert mean.final_accuracy is not None
    assert clipped.final_accuracy is not None
    assert mean.final_accuracy < 0.5
    assert clipped.final_accuracy > 0.8


def test_partial_participation_samples_the_configured_count() -> None:
    scenario = Scenario(
        devices=10, rounds=6, devices_per_round=4, attack="sign-flip", byzantine_fraction=0.3
    )
    result = run_scenario(scenario)
    assert [r.cohort_size for r in result.rounds] == [4] * 6
    assert all(r.accepted == 4 for r in result.rounds)
    # The cohort is re-drawn every round, so the Byzantine count in it varies.
    assert len({r.byzantine_in_cohort for r in result.rounds}) > 1


def test_participation_rate_rounds_to_a_device_count() -> None:
    result = run_scenario(Scenario(devices=10, rounds=2, participation_rate=0.3))
    assert [r.cohort_size for r in result.rounds] == [3, 3]


def test_simulated_cohorts_are_the_round_engines_draws() -> None:
    """The devices that send in a round are the coordinator's sample_cohort draw."""
    # Prepare
    simulator = Simulator(Scenario(devices=10, rounds=3, devices_per_round=4, seed=5))
    cohorts: list[frozenset[str]] = []
    for round_number in (1, 2, 3):
        before = {d.device_id: d.counter for d in simulator.devices}
        # Execute
        simulator.step(round_number)
        sent = frozenset(d.device_id for d in simulator.devices if d.counter > before[d.device_id])
        # Assert
        assert sent == sample_cohort(simulator.ids, round_number, 5, devices_per_round=4)
        cohorts.append(sent)
    assert len(set(cohorts)) > 1


@pytest.mark.parametrize("attack", PROTOCOL_ATTACKS or ["(none registered)"])
def test_ingest_rejects_protocol_level_attacks(attack: str) -> None:
    if not PROTOCOL_ATTACKS:
        pytest.skip("faults has no protocol-level attack registered yet")
    result = run_scenario(
        Scenario(devices=8, rounds=2, attack=attack, byzantine_fraction=0.25, defense="mean")
    )
    expected_reason = {
        "bad-signature": "bad-signature",
        "garbage-payload": None,  # malformed, bad-body... whichever check fails first
        "sybil": "unknown-device",
    }[attack]
    for record in result.rounds:
        assert sum(record.rejected.values()) >= 2  # at least one message per attacker
        if expected_reason is not None:
            assert expected_reason in record.rejected
        if attack == "sybil":
            assert record.accepted <= 8  # sybil identities never get in
        else:
            assert record.accepted == 6  # the attackers' only messages were refused


def test_flag_counts_on_a_hand_case() -> None:
    counts = flag_counts(["a", "b", "c", "d"], ["a", "c"], frozenset({"a", "b"}))
    assert counts == FlagCounts(true_positives=1, false_positives=1, false_negatives=1)
    assert counts.precision == 0.5
    assert counts.recall == 0.5
    total = counts + flag_counts(["a", "b"], ["a", "b"], frozenset({"a", "b"}))
    assert (total.precision, total.recall) == (3 / 4, 3 / 4)


def test_flag_metrics_are_none_without_flags_or_positives() -> None:
    counts = flag_counts(["a", "b"], [], frozenset())
    assert counts.precision is None
    assert counts.recall is None


def test_simulation_flags_count_against_the_compromised_set() -> None:
    result = run_scenario(
        Scenario(devices=10, rounds=3, attack="sign-flip", byzantine_fraction=0.2)
    )
    assert len(result.compromised) == 2
    assert result.flags.recall == 1.0
    assert result.flags.true_positives == 2 * 3


def test_momentum_changes_what_devices_send() -> None:
    plain = run_scenario(Scenario(devices=6, rounds=3, defense="mean"))
    momentum = run_scenario(Scenario(devices=6, rounds=3, defense="mean", momentum1=0.9))
    assert plain.accuracies != momentum.accuracies


def test_same_seed_gives_the_same_run() -> None:
    scenario = Scenario(devices=6, rounds=3, attack="label-flip", byzantine_fraction=0.34)
    assert run_scenario(scenario).accuracies == run_scenario(scenario).accuracies


def test_label_sorted_partition_gives_single_class_devices() -> None:
    simulator = Simulator(Scenario(devices=20, rounds=1, partition="label-sorted"))
    classes = [len(np.unique(d.source.read(1).labels)) for d in simulator.devices]
    assert max(classes) <= 2


@pytest.mark.parametrize(
    "attack", sorted(ATTACKS) + sorted(SENSOR_FAULTS) + sorted(omniscient_attacks())
)
def test_every_registered_attack_and_fault_runs(attack: str) -> None:
    result = run_scenario(
        Scenario(devices=6, rounds=2, attack=attack, byzantine_fraction=0.34, epochs=1)
    )
    assert len(result.compromised) == 2
    assert len(result.rounds) == 2
    assert result.final_accuracy is not None


def test_unknown_attack_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown attack"):
        Simulator(Scenario(devices=4, rounds=1, attack="no-such-attack", byzantine_fraction=0.25))


def test_scenario_rejects_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("devices = 4\nrounds = 1\nbogus = 3\n")
    with pytest.raises(ValueError, match="bogus"):
        load_scenario(path)


def test_sim_run_cli_writes_its_outputs(tmp_path: Path) -> None:
    path = tmp_path / "scenario.toml"
    path.write_text(
        'devices = 6\nrounds = 2\nattack = "sign-flip"\nbyzantine_fraction = 0.34\n'
        'defense = "trimmed-mean"\naggregation = { trim_fraction = 0.34 }\n'
    )
    out = tmp_path / "out"
    assert main(["sim", "run", str(path), "--out", str(out)]) == 0
    document = json.loads((out / "result.json").read_text())
    assert len(document["rounds"]) == 2
    assert (out / "accuracy.png").stat().st_size > 0
    assert (out / "report.md").read_text().startswith("# byzedge sim run")


def test_sim_matrix_cli_writes_the_documented_outputs(tmp_path: Path) -> None:
    out = tmp_path / "matrix"
    code = main(
        [
            "sim",
            "matrix",
            "--devices",
            "6",
            "--rounds",
            "2",
            "--attacks",
            "sign-flip,gaussian-noise",
            "--defenses",
            "mean,clipping-vr",
            "--fractions",
            "0.34",
            "--partition",
            "iid",
            "--seed",
            "1",
            "--workers",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    document = json.loads((out / "matrix.json").read_text())
    cells = document["cells"]
    assert len(cells) == 4
    assert all(set(cell) == set(CELL_KEYS) for cell in cells)
    assert {(c["attack"], c["defense"]) for c in cells} == {
        (a, d) for a in ("sign-flip", "gaussian-noise") for d in ("mean", "clipping-vr")
    }
    assert all(c["backdoor_success"] is None for c in cells)
    assert all(0 <= c["clean_accuracy"] <= 1 for c in cells)
    assert (out / "heatmap.png").read_bytes()[:4] == b"\x89PNG"
    assert "worst case" in (out / "report.md").read_text()


def test_sim_matrix_cli_refuses_an_unknown_defense(tmp_path: Path) -> None:
    code = main(
        ["sim", "matrix", "--attacks", "sign-flip", "--defenses", "nope", "--out", str(tmp_path)]
    )
    assert code == 2


def test_pre_aggregator_wraps_an_inner_rule() -> None:
    result = run_scenario(
        Scenario(
            devices=8, rounds=2, partition="label-sorted", defense="bucketing+geometric-median"
        )
    )
    assert all(r.fallback is None for r in result.rounds)
    assert result.final_accuracy is not None


def test_iid_byzantine_data_leaves_the_partition_to_honest_devices() -> None:
    simulator = Simulator(
        Scenario(
            devices=20,
            rounds=1,
            partition="label-sorted",
            attack="sign-flip",
            byzantine_fraction=0.2,
            byzantine_data="iid",
        )
    )
    honest = [d for d in simulator.devices if d.device_id not in simulator.compromised]
    covered = np.concatenate([d.source.read(1).labels for d in honest])
    assert len(covered) == len(simulator.split.train_y)  # honest devices hold every sample
    for device in simulator.devices:
        if device.device_id in simulator.compromised:
            assert len(np.unique(device.source.read(1).labels)) > 5


def test_fault_plan_assigns_local_and_colluding_attacks(tmp_path: Path) -> None:
    plan = tmp_path / "plan.toml"
    plan.write_text(
        "seed = 3\n"
        '[[target]]\ncount = 1\nfaults = [{ name = "sign-flip" }]\n'
        '[[target]]\ncount = 2\nfaults = [{ name = "alie" }]\n'
    )
    scenario = tmp_path / "scenario.toml"
    scenario.write_text('devices = 8\nrounds = 2\nfault_plan = "plan.toml"\n')
    simulator = Simulator(load_scenario(scenario))
    result = simulator.run()
    assert len(result.compromised) == 3
    assert sum(d.colluding for d in simulator.devices) == 2
    assert all(r.accepted == 8 for r in result.rounds)


@pytest.mark.parametrize(
    ("participation", "aggregation", "radius"),
    [
        ({}, {}, "median"),
        ({"devices_per_round": 4}, {}, "model-step"),
        ({"participation_rate": 0.5}, {}, "model-step"),
        ({"participation_rate": 1.0}, {}, "median"),
        ({"devices_per_round": 4}, {"radius": "median"}, "median"),
    ],
)
def test_clipping_vr_radius_follows_participation_as_in_the_coordinator(
    participation: dict[str, float], aggregation: dict[str, str], radius: str
) -> None:
    scenario = Scenario(devices=10, rounds=1, aggregation=aggregation, **participation)  # type: ignore[arg-type]
    rule = _build_defense(scenario)
    assert isinstance(rule, ClippingVR)
    assert rule.radius_mode == radius
