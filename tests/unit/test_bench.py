"""The aggregator benchmark's bookkeeping (tiny sizes; no timing is asserted)."""

from __future__ import annotations

import importlib.util
import itertools
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from byzedge import bench
from byzedge.commands.bench import main
from byzedge.coordinator.aggregation import AGGREGATORS

TINY = ["--n", "12", "--d", "16", "--f", "2", "--repeats", "1", "--no-memory"]
BYZFL_INSTALLED = importlib.util.find_spec("byzfl") is not None

# The repository's benchmark scripts import their sibling modules by name, as they do when
# run as `python benchmarks/aggregators.py` (the script's folder is then on sys.path).
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import aggregators as bench_script  # noqa: E402
import peers  # noqa: E402


def test_make_updates_is_float32_with_the_byzantine_rows_last() -> None:
    updates = bench.make_updates(8, 5, 2, seed=1)
    assert updates.shape == (8, 5)
    assert updates.dtype == np.float32
    np.testing.assert_array_equal(updates, bench.make_updates(8, 5, 2, seed=1))


def test_measure_rules_has_one_row_per_registry_rule() -> None:
    rows = bench.measure_rules(bench.make_updates(12, 16, 2), f=2, repeats=2)
    assert [row.name for row in rows] == list(AGGREGATORS)
    assert all(row.error is None for row in rows), [row.status for row in rows]
    assert all(len(row.seconds) == 2 for row in rows)


def test_ratios_are_to_the_mean_measured_in_the_same_run() -> None:
    ticks = itertools.count()
    rows = bench.measure_rules(
        bench.make_updates(12, 16, 2), f=2, repeats=3, clock=lambda: float(next(ticks))
    )
    by_name = {row.name: row for row in rows}
    baseline = by_name["mean"].median
    assert by_name["mean"].ratio == 1.0
    for row in rows:
        assert row.ratio == pytest.approx(row.median / baseline)


def test_status_says_met_or_gives_the_figure() -> None:
    met = bench.TimingRow("krum", {}, (1.0,), ratio=5.0, target=6.0)
    missed = bench.TimingRow("krum", {}, (1.0,), ratio=7.25, target=6.0)
    assert met.status == "met"
    assert missed.status == "NOT met (7.2x vs target 6x)"


def test_byzantine_fraction_is_f_over_n() -> None:
    assert bench.rule_params("krum", 50, 10) == {"max_byzantine_fraction": 0.2}
    assert bench.rule_params("mean", 50, 10) == {}


def test_cli_writes_a_table_with_a_row_per_rule(tmp_path: Path) -> None:
    out = tmp_path / "aggregators.md"
    argv = ["aggregators", "--n", "12", "--d", "16", "--f", "2", "--repeats", "1"]
    assert main([*argv, "--out", str(out)]) == 0
    table = out.read_text(encoding="utf-8")
    for name in AGGREGATORS:
        assert f"\n| {name} |" in table
    assert "byzedge bench aggregators --n 12" in table


def test_the_installed_command_has_no_byzfl_section_and_still_accepts_no_byzfl(
    tmp_path: Path,
) -> None:
    out = tmp_path / "aggregators.md"
    assert main(["aggregators", *TINY, "--no-byzfl", "--out", str(out)]) == 0
    assert "ByzFL" not in out.read_text(encoding="utf-8")


def test_cli_rejects_f_not_below_n(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["aggregators", "--n", "4", "--f", "4"]) == 2
    assert "0 <= --f < --n" in capsys.readouterr().err


def test_a_comparison_adds_its_section_after_the_memory_table() -> None:
    seen: list[tuple[tuple[int, int], int, int, Any]] = []

    def compare(updates: Any, f: int, repeats: int, names: Any) -> bench.Section:
        seen.append((updates.shape, f, repeats, names))
        return bench.Section("Against a peer", "| a | b |")

    report = bench.run_aggregators(
        n=6, d=4, f=1, repeats=1, names=["krum"], memory=False, comparisons=[compare]
    )
    table = bench.render_markdown(report)

    assert seen == [((6, 4), 1, 1, ["krum"])]
    assert table.endswith("\n## Against a peer\n\n| a | b |\n")
    assert table.index("## Streaming against batch") < table.index("## Against a peer")


def test_the_repository_script_adds_the_byzfl_section(tmp_path: Path) -> None:
    out = tmp_path / "aggregators.md"
    assert bench_script.main([*TINY, "--out", str(out)]) == 0
    table = out.read_text(encoding="utf-8")
    assert f"\n## {peers.TITLE}\n" in table
    assert "python benchmarks/aggregators.py --n 12" in table


@pytest.mark.skipif(BYZFL_INSTALLED, reason="ByzFL is installed here")
def test_without_byzfl_the_scripts_section_says_why(tmp_path: Path) -> None:
    out = tmp_path / "aggregators.md"
    assert bench_script.main([*TINY, "--out", str(out)]) == 0
    section = out.read_text(encoding="utf-8").split(f"## {peers.TITLE}\n")[1]
    assert section.strip() == "ByzFL not installed (pip install 'byzedge[bench]')"


def test_the_scripts_no_byzfl_leaves_the_section_out(tmp_path: Path) -> None:
    out = tmp_path / "aggregators.md"
    assert bench_script.main([*TINY, "--no-byzfl", "--out", str(out)]) == 0
    assert "ByzFL" not in out.read_text(encoding="utf-8")


# -- the ByzFL adapters, against a stand-in module --------------------------------------


class _Reduce:
    """A ByzFL aggregator stand-in: ``(n, d) -> (d,)`` with numpy."""

    def __init__(self, **params: Any) -> None:
        self.params = params

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(np.asarray(x).mean(axis=0))


class _Median(_Reduce):
    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(np.median(np.asarray(x), axis=0))


class _PreAggregate(_Reduce):
    """A ByzFL pre-aggregator stand-in: ``(n, d) -> (n, d)``."""

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x)


class _Broken(_Reduce):
    def __call__(self, x: np.ndarray) -> np.ndarray:
        raise RuntimeError("boom")


def fake_byzfl(**overrides: type[_Reduce]) -> types.ModuleType:
    module = types.ModuleType("fake_byzfl")
    classes: dict[str, type[_Reduce]] = {
        "Average": _Reduce,
        "Median": _Median,
        "TrMean": _Reduce,
        "Krum": _Reduce,
        "MultiKrum": _Reduce,
        "GeometricMedian": _Reduce,
        "CenteredClipping": _Reduce,
        "Clipping": _PreAggregate,
        "NNM": _PreAggregate,
        "ARC": _PreAggregate,
        **overrides,
    }
    for name, cls in classes.items():
        setattr(module, name, cls)
    return module


def test_peer_pairs_cover_the_shared_rules_with_our_matching_parameters() -> None:
    pairs = peers.peer_pairs(fake_byzfl(), n=10, f=2)

    assert set(pairs) == {
        "mean",
        "coordinate-median",
        "trimmed-mean",
        "krum",
        "multi-krum",
        "geometric-median",
        "centered-clipping",
        "norm-clipping",
        "nnm",
        "arc",
    } & set(AGGREGATORS)
    label, params, _, _ = pairs["krum"]
    assert label == "Krum(f=2)"
    assert params == {"max_byzantine_fraction": 0.2}


def test_peer_pairs_skip_pre_aggregators_the_peer_lacks() -> None:
    module = fake_byzfl()
    del module.NNM, module.ARC

    assert not {"nnm", "arc"} & set(peers.peer_pairs(module, n=10, f=2))


def test_measure_peers_times_ours_and_theirs_for_each_pair() -> None:
    ticks = itertools.count()
    rows = peers.measure_peers(
        bench.make_updates(10, 8, 2),
        f=2,
        repeats=2,
        names=["mean", "krum"],
        clock=lambda: float(next(ticks)),
        byzfl=fake_byzfl(),
    )

    assert not isinstance(rows, str)
    assert [row.name for row in rows] == ["mean", "krum"]
    assert all(row.ours == row.theirs == 1.0 for row in rows)  # one tick per call
    krum = rows[1]
    assert krum.target_speedup == 10.0
    assert krum.status == "NOT met (1.0x vs >= 10x faster)"
    assert krum.note == "ours: max_byzantine_fraction=0.2"


def test_a_failing_peer_call_gives_an_error_row() -> None:
    rows = peers.measure_peers(
        bench.make_updates(10, 8, 2), f=2, repeats=1, names=["krum"], byzfl=fake_byzfl(Krum=_Broken)
    )

    assert not isinstance(rows, str)
    assert rows[0].status == "error"
    assert rows[0].note == "RuntimeError: boom"


def test_a_reason_instead_of_a_module_is_passed_through() -> None:
    updates = bench.make_updates(10, 8, 2)
    assert peers.measure_peers(updates, 2, 1, byzfl="not here") == "not here"
    assert peers.render_peers("not here") == "not here"


def test_render_peers_gives_one_row_per_rule() -> None:
    rows = [peers.PeerRow("krum", "Krum(f=2)", 0.01, 0.2, 10.0, "ours: x")]

    body = peers.render_peers(rows)

    assert body.splitlines()[-1] == "| krum | Krum(f=2) | 0.0100 | 0.2000 | 0.050 | met | ours: x |"


@pytest.fixture
def restored_byzfl_modules() -> Iterator[None]:
    def ours() -> list[str]:
        return [key for key in sys.modules if key == "byzfl" or key.startswith("byzfl.")]

    saved = {key: sys.modules[key] for key in ours()}
    for key in saved:
        del sys.modules[key]
    yield
    for key in ours():
        del sys.modules[key]
    sys.modules.update(saved)


def _fake_package(root: Path, init: str, aggregators: str) -> None:
    package = root / "byzfl"
    package.mkdir()
    (package / "__init__.py").write_text(init, encoding="utf-8")
    (package / "aggregators.py").write_text(aggregators, encoding="utf-8")


@pytest.mark.usefixtures("restored_byzfl_modules")
def test_load_byzfl_skips_a_package_init_that_cannot_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_package(tmp_path, 'raise ImportError("no torchvision")\n', "class Average:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    module = peers.load_byzfl()

    assert isinstance(module, types.ModuleType)
    assert module.__name__ == "byzfl.aggregators"
    assert hasattr(module, "Average")
    assert sys.modules["byzfl"].__path__ == [str(tmp_path / "byzfl")]


@pytest.mark.usefixtures("restored_byzfl_modules")
def test_load_byzfl_says_why_when_neither_import_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_package(tmp_path, 'raise ImportError("no torchvision")\n', "import no_such_module\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    reason = peers.load_byzfl()

    assert isinstance(reason, str)
    assert reason.startswith("ByzFL not importable (ImportError: no torchvision; then ")
    assert "byzfl" not in sys.modules
