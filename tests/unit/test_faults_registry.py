from __future__ import annotations

import ast
from pathlib import Path

from byzedge.faults import ATTACKS, SENSOR_FAULTS, known_fault_names
from byzedge.faults.omniscient import OMNISCIENT_ATTACKS


def test_sensor_fault_names_are_the_permanent_ones() -> None:
    assert set(SENSOR_FAULTS) == {
        "stuck-at",
        "sensor-noise",
        "drift",
        "dropout",
        "spikes",
        "bit-flip",
        "calibration-offset",
    }


def test_attack_names_are_the_permanent_ones() -> None:
    assert set(ATTACKS) == {
        "label-flip",
        "backdoor",
        "sign-flip",
        "gaussian-noise",
        "scaled-update",
        "model-replacement",
        "zero-update",
        "stale-replay",
        "random-update",
        "garbage-payload",
        "bad-signature",
        "sybil",
    }


def test_colluding_attack_names_are_the_permanent_ones() -> None:
    assert set(OMNISCIENT_ATTACKS) == {
        "alie",
        "ipm",
        "min-max",
        "min-sum",
        "mimic",
        "shift-back",
        "optimal-alie",
        "optimal-ipm",
    }


def test_registry_keys_match_class_names() -> None:
    for name, cls in {**SENSOR_FAULTS, **ATTACKS, **OMNISCIENT_ATTACKS}.items():
        assert cls.name == name


def test_registries_do_not_share_names() -> None:
    assert not set(SENSOR_FAULTS) & set(ATTACKS)
    assert not (set(SENSOR_FAULTS) | set(ATTACKS)) & set(OMNISCIENT_ATTACKS)
    assert len(known_fault_names()) == len(SENSOR_FAULTS) + len(ATTACKS)


def test_every_entry_says_what_it_acts_on() -> None:
    assert all(cls.acts_on == "data" for cls in SENSOR_FAULTS.values())
    assert {name: cls.acts_on for name, cls in ATTACKS.items()} == {
        "label-flip": "data",
        "backdoor": "data",
        "sign-flip": "update",
        "gaussian-noise": "update",
        "scaled-update": "update",
        "model-replacement": "update",
        "zero-update": "update",
        "stale-replay": "update",
        "random-update": "update",
        "garbage-payload": "wire",
        "bad-signature": "wire",
        "sybil": "wire",
    }


def test_faults_package_never_imports_torch() -> None:
    root = Path(__file__).resolve().parents[2] / "faults"
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert all(alias.name.split(".")[0] != "torch" for alias in node.names), path
            elif isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] != "torch", path
