"""Fault plans: selection by ids, count or fraction; defaults; colluding attacks; the CLI."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from byzedge.cli import main
from byzedge.edge_agent.seams import LocalData
from byzedge.faults.errors import FaultConfigError
from byzedge.faults.plan import FaultPlan, load_fault_plan, read_fault_plan, simulator_device_ids

FLEET = simulator_device_ids(20)


class FixedSource:
    def read(self, round_number: int) -> LocalData:
        return LocalData(
            features=np.full((40, 64), 0.25, dtype=np.float32),
            labels=np.arange(40, dtype=np.int64) % 10,
        )


def plan(**raw: object) -> FaultPlan:
    return FaultPlan.model_validate(raw)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plan.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_count_selection_is_reproducible_for_a_seed() -> None:
    raw = {"seed": 4, "target": [{"count": 5, "faults": [{"name": "sign-flip"}]}]}
    first = plan(**raw).compromised(FLEET)
    assert len(first) == 5
    assert plan(**raw).compromised(FLEET) == first
    assert plan(**{**raw, "seed": 5}).compromised(FLEET) != first


def test_selection_does_not_depend_on_the_order_ids_are_given_in() -> None:
    raw = plan(seed=1, target=[{"fraction": 0.25, "faults": [{"name": "zero-update"}]}])
    assert raw.compromised(FLEET) == raw.compromised(list(reversed(FLEET)))


def test_fraction_takes_the_floor_of_the_share() -> None:
    raw = plan(target=[{"fraction": 0.29, "faults": [{"name": "zero-update"}]}])
    assert len(raw.compromised(simulator_device_ids(100))) == 29
    assert len(raw.compromised(simulator_device_ids(10))) == 2


def test_picking_targets_choose_disjoint_devices() -> None:
    raw = plan(
        target=[
            {"devices": ["dev-000"], "faults": [{"name": "drift"}]},
            {"count": 10, "faults": [{"name": "sign-flip"}]},
            {"count": 9, "faults": [{"name": "label-flip"}]},
        ]
    )
    assigned = raw.assignments(FLEET)
    assert len(assigned) == 20
    assert all(len(specs) == 1 for specs in assigned.values())


def test_asking_for_more_devices_than_remain_is_explained() -> None:
    raw = plan(target=[{"count": 21, "faults": [{"name": "sign-flip"}]}])
    with pytest.raises(FaultConfigError, match="asks for 21 devices"):
        raw.assignments(FLEET)


def test_picking_without_a_fleet_is_explained() -> None:
    raw = plan(target=[{"count": 2, "faults": [{"name": "sign-flip"}]}])
    with pytest.raises(FaultConfigError, match="fleet_devices"):
        raw.injector_for("dev-001")


def test_target_needs_exactly_one_selector() -> None:
    with pytest.raises(ValueError, match="exactly one of devices, count or fraction"):
        plan(target=[{"devices": ["a"], "count": 1, "faults": [{"name": "drift"}]}])


def test_target_defaults_fill_each_faults_onset_and_probability() -> None:
    raw = plan(
        target=[
            {
                "devices": ["dev-001"],
                "start_round": 3,
                "probability": 0.5,
                "faults": [{"name": "sign-flip", "params": {"start_round": 1}}],
            }
        ]
    )
    (spec,) = raw.faults_for("dev-001")
    assert spec.params == {"start_round": 1, "probability": 0.5}


def test_label_flip_changes_only_the_targeted_devices_labels() -> None:
    raw = plan(target=[{"devices": ["dev-003"], "faults": [{"name": "label-flip"}]}])
    honest = raw.injector_for("dev-004").wrap_source(FixedSource()).read(0)
    flipped = raw.injector_for("dev-003").wrap_source(FixedSource()).read(0)
    np.testing.assert_array_equal(honest.labels, FixedSource().read(0).labels)
    np.testing.assert_array_equal(flipped.labels, 9 - FixedSource().read(0).labels)


def test_backdoor_touches_only_the_targeted_devices_data() -> None:
    raw = plan(seed=2, target=[{"count": 3, "faults": [{"name": "backdoor"}]}])
    compromised = set(raw.compromised(FLEET))
    clean = FixedSource().read(0)
    for device in FLEET:
        data = raw.injector_for(device, FLEET).wrap_source(FixedSource()).read(0)
        changed = not np.array_equal(data.features, clean.features)
        assert changed == (device in compromised), device


def test_devices_get_different_fault_seeds() -> None:
    raw = plan(target=[{"devices": ["*"], "faults": [{"name": "sensor-noise"}]}])
    a = raw.injector_for("dev-001", FLEET).wrap_source(FixedSource()).read(0).features
    b = raw.injector_for("dev-002", FLEET).wrap_source(FixedSource()).read(0).features
    assert not np.array_equal(a, b)


def test_colluding_attack_in_a_plan_is_built_for_the_simulator() -> None:
    raw = plan(target=[{"count": 4, "faults": [{"name": "alie", "params": {"z": 1.0}}]}])
    device = raw.compromised(FLEET)[0]
    injector = raw.injector_for(device, FLEET)
    assert injector.colluding is not None
    assert injector.colluding.name == "alie"
    assert injector.colluding_attack is not None
    assert injector.is_malicious
    assert injector.update_stages() == []


def test_real_agent_refuses_a_colluding_attack(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [[target]]
        devices = ["dev-001"]
        faults = [{ name = "min-max" }]
        """,
    )
    with pytest.raises(ValueError, match="simulator"):
        load_fault_plan(path, "dev-001")
    assert not load_fault_plan(path, "dev-002").is_compromised


def test_plan_names_a_plugin_attack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "byzedge_plan_plugin.py").write_text(
        "def attack(honest, num_byzantine, context):\n    return honest[:num_byzantine]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write(
        tmp_path,
        """
        [[target]]
        devices = ["dev-001"]
        faults = [{ name = "byzedge_plan_plugin:attack" }]
        """,
    )
    injector = read_fault_plan(path).injector_for("dev-001")
    assert injector.colluding_attack is not None


def test_bad_fault_parameter_names_the_target(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [[target]]
        devices = ["dev-001"]
        faults = [{ name = "spikes", params = { intensity = 4.0 } }]
        """,
    )
    with pytest.raises(ValueError, match="target 1: intensity"):
        read_fault_plan(path)


def test_cli_validate_describes_who_gets_what(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        """
        seed = 3
        [[target]]
        fraction = 0.1
        faults = [{ name = "sybil" }]
        """,
    )
    assert main(["faults", "validate", str(path), "--devices", "20"]) == 0
    out = capsys.readouterr().out
    assert "2 of 20 device(s) compromised" in out
    assert "sybil" in out


def test_cli_validate_explains_an_invalid_plan_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        """
        [[target]]
        count = 2
        faults = [{ name = "teleport" }]
        """,
    )
    assert main(["faults", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown fault 'teleport'" in err


def test_cli_validate_needs_the_fleet_for_count_targets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "[[target]]\ncount = 2\nfaults = [{ name = 'zero-update' }]\n")
    assert main(["faults", "validate", str(path)]) == 0
    assert "fleet: unknown" in capsys.readouterr().out


def test_cli_validate_lists_named_devices_outside_the_fleet_without_counting_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        """
        [[target]]
        devices = ["dev-001", "pi-kitchen"]
        faults = [{ name = "zero-update" }]
        """,
    )
    assert main(["faults", "validate", str(path), "--devices", "4"]) == 0
    out = capsys.readouterr().out
    assert "1 of 4 device(s) compromised" in out
    assert "not in this fleet (ignored): pi-kitchen" in out
    assert "every other device (3): honest" in out
