from __future__ import annotations

import ast
from pathlib import Path

from faults import ATTACKS, SENSOR_FAULTS, known_fault_names


def test_sensor_fault_names_are_the_permanent_ones() -> None:
    assert set(SENSOR_FAULTS) == {"stuck-at", "sensor-noise", "drift", "dropout"}


def test_attack_names_are_the_permanent_ones() -> None:
    assert set(ATTACKS) == {"label-flip", "sign-flip", "gaussian-noise"}


def test_registry_keys_match_class_names() -> None:
    for name, cls in {**SENSOR_FAULTS, **ATTACKS}.items():
        assert cls.name == name


def test_registries_do_not_share_names() -> None:
    assert not set(SENSOR_FAULTS) & set(ATTACKS)
    assert len(known_fault_names()) == len(SENSOR_FAULTS) + len(ATTACKS)


def test_every_entry_says_what_it_acts_on() -> None:
    assert all(cls.acts_on == "data" for cls in SENSOR_FAULTS.values())
    assert {name: cls.acts_on for name, cls in ATTACKS.items()} == {
        "label-flip": "data",
        "sign-flip": "update",
        "gaussian-noise": "update",
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
