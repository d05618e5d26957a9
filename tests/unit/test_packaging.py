"""What ``pip install byzedge`` puts on a machine: one top-level package, light agent imports."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUBPACKAGES = (
    "protocol",
    "daemon",
    "models",
    "methods",
    "edge_agent",
    "coordinator",
    "faults",
    "fleet_sim",
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(REPO),
        ],
        check=True,
    )
    return next(out.glob("byzedge-*.whl"))


def test_the_wheel_installs_byzedge_as_its_only_top_level_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        top_level = next(n for n in archive.namelist() if n.endswith("top_level.txt"))
        names = archive.read(top_level).decode().split()
        roots = {n.split("/")[0] for n in archive.namelist() if not n.startswith("byzedge-")}

    assert names == ["byzedge"]
    assert roots == {"byzedge"}


def test_every_source_module_is_in_the_wheel_under_byzedge(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        packaged = set(archive.namelist())
    sources = {
        f"byzedge/{path.relative_to(REPO).as_posix()}"
        for package in SUBPACKAGES
        for path in (REPO / package).rglob("*.py")
    }

    assert sources <= packaged


def test_the_agent_imports_nothing_of_the_coordinator_nor_numba() -> None:
    code = (
        "import byzedge.edge_agent.service, sys; "
        "assert 'numba' not in sys.modules, 'numba'; "
        "assert not [m for m in sys.modules if m.startswith('byzedge.coordinator')]; "
        "assert 'torch' not in sys.modules, 'torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO.parent)


def test_the_old_top_level_names_are_not_importable() -> None:
    # From a folder that is not the repository, as any user's program runs.
    for name in SUBPACKAGES:
        result = subprocess.run(
            [sys.executable, "-c", f"import {name}"],
            cwd=REPO.parent,
            capture_output=True,
            check=False,
        )
        assert result.returncode != 0, name
