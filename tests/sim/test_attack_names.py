"""One attack resolver: what ``sim run`` takes in a scenario, ``sim matrix --attacks`` takes."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from byzedge.cli import main
from byzedge.faults import ATTACKS, OMNISCIENT_ATTACKS, SENSOR_FAULTS, is_fault_name
from byzedge.fleet_sim.scenario import Scenario

PLUGIN = """
import numpy as np

CALLS = []


def myattack(honest, num_byzantine, context):
    CALLS.append(num_byzantine)
    return np.tile(-honest.mean(axis=0), (num_byzantine, 1))
"""


@pytest.fixture
def mymod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A user's colluding attack, ``mymod:myattack``, importable from a folder on sys.path."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "mymod.py").write_text(PLUGIN, encoding="utf-8")
    monkeypatch.syspath_prepend(str(folder))
    yield "mymod:myattack"
    sys.modules.pop("mymod", None)


def test_sim_matrix_runs_a_users_colluding_attack(mymod: str, tmp_path: Path) -> None:
    out = tmp_path / "matrix"
    argv = ["sim", "matrix", "--devices", "4", "--rounds", "1", "--attacks", mymod]
    argv += ["--defenses", "mean", "--fractions", "0.5", "--workers", "1", "--out", str(out)]

    assert main(argv) == 0

    document = json.loads((out / "matrix.json").read_text())
    assert [cell["attack"] for cell in document["cells"]] == [mymod]
    assert all("error" not in run for run in document["runs"])
    assert sys.modules["mymod"].CALLS == [2]  # the cell's one round forged 2 updates


def test_sim_matrix_refuses_an_unknown_attack_listing_the_forms_it_takes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["sim", "matrix", "--attacks", "no-such-attack", "--defenses", "mean"]

    assert main([*argv, "--out", str(tmp_path)]) == 2

    error = capsys.readouterr().err
    assert "unknown attack 'no-such-attack'" in error
    assert "module:function" in error


@pytest.mark.parametrize(
    "name",
    [
        *sorted(SENSOR_FAULTS),
        *sorted(ATTACKS),
        *sorted(OMNISCIENT_ATTACKS),
        "mymod:myattack",
        "pkg.sub:attack",
    ],
)
def test_a_scenario_takes_every_name_sim_matrix_takes(name: str) -> None:
    assert is_fault_name(name)
    assert Scenario(attack=name).attack == name


@pytest.mark.parametrize("name", ["no-such-attack", "mymod:", "1mod:attack"])
def test_a_scenario_refuses_a_name_sim_matrix_refuses(name: str) -> None:
    assert not is_fault_name(name)
    with pytest.raises(ValueError, match="unknown attack"):
        Scenario(attack=name)
