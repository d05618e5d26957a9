"""Our aggregation rules against ByzFL's, on the same data in the same run.

A repository-only part of the aggregator benchmark (``python benchmarks/aggregators.py``):
it is not shipped with the package, since it imports a peer library (ByzFL, the optional
``bench`` extra) in a way no installed code should (see :func:`load_byzfl`).
:func:`byzfl_section` is a :data:`byzedge.bench.Comparison`; without ByzFL its section
says why, and the rest of the benchmark runs as usual.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import statistics
import sys
import time
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from byzedge.bench import INNER, Clock, Section, time_round_robin

__all__ = [
    "PEER_SPEEDUP_TARGETS",
    "TITLE",
    "PeerRow",
    "byzfl_section",
    "load_byzfl",
    "measure_peers",
    "peer_pairs",
    "render_peers",
]

TITLE = "Against ByzFL (same data, same run)"
"""The heading of the comparison's section in the table."""

PEER_SPEEDUP_TARGETS: Mapping[str, float] = {"krum": 10.0}
"""Rules that must beat ByzFL by more than 1x: ours must be this many times faster."""

PeerCall = Callable[[NDArray[np.float32]], object]
Pair = tuple[str, dict[str, Any], PeerCall, str]
"""ByzFL's label, our rule's parameters, ByzFL's call, a note."""


@dataclass(frozen=True, slots=True)
class PeerRow:
    """Our median time against ByzFL's for one rule, on the same data."""

    name: str
    peer: str
    ours: float
    theirs: float
    target_speedup: float
    note: str = ""

    @property
    def speedup(self) -> float:
        """``theirs / ours``: how many times faster we are."""
        return self.theirs / self.ours

    @property
    def status(self) -> str:
        """``met``, ``NOT met (...)`` against the speedup target, or ``error``."""
        if self.ours != self.ours or self.theirs != self.theirs:  # NaN: a call failed
            return "error"
        if self.target_speedup <= 1.0:
            return "met" if self.speedup > 1.0 else f"NOT met ({self.speedup:.2f}x faster)"
        if self.speedup >= self.target_speedup:
            return "met"
        return f"NOT met ({self.speedup:.1f}x vs >= {self.target_speedup:g}x faster)"


def load_byzfl() -> types.ModuleType | str:
    """Return ``byzfl.aggregators``, or why it cannot be imported.

    ``import byzfl`` also imports its training framework and so torchvision; where that
    fails (a CUDA torchvision next to a CPU torch) the aggregators, which need only
    numpy, torch and scipy, are loaded without the package's ``__init__``: an empty
    ``byzfl`` package object is put in ``sys.modules`` in its place (and taken out again
    if even that fails). A second call returns the module the first one loaded.
    """
    loaded = sys.modules.get("byzfl.aggregators")
    if loaded is not None:
        return loaded
    spec = importlib.util.find_spec("byzfl")
    if spec is None or not spec.submodule_search_locations:
        return "ByzFL not installed (pip install 'byzedge[bench]')"
    try:
        return importlib.import_module("byzfl.aggregators")
    except Exception as error:
        first = f"{type(error).__name__}: {error}"
    for module in [key for key in sys.modules if key == "byzfl" or key.startswith("byzfl.")]:
        del sys.modules[module]
    package = types.ModuleType("byzfl")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["byzfl"] = package
    try:
        return importlib.import_module("byzfl.aggregators")
    except Exception as error:
        del sys.modules["byzfl"]
        return f"ByzFL not importable ({first}; then {type(error).__name__}: {error})"


def peer_pairs(byzfl: types.ModuleType, n: int, f: int) -> dict[str, Pair]:
    """Map our rule -> (ByzFL name, our params, ByzFL call, note) for every shared rule.

    ``byzfl`` is ``byzfl.aggregators`` (or any module object with the same classes:
    ``Average``, ``Median``, ``TrMean``, ``Krum``, ``MultiKrum``, ``GeometricMedian``,
    ``CenteredClipping``, ``Clipping`` and, when present, ``NNM`` and ``ARC``).
    """
    from byzedge.coordinator.aggregation import AGGREGATORS  # noqa: PLC0415

    pairs: dict[str, Pair] = {}
    fraction = f / n

    def add(ours: str, label: str, params: dict[str, Any], call: Any, note: str = "") -> None:
        if ours in AGGREGATORS:
            pairs[ours] = (label, params, call, note)

    average, median = byzfl.Average(), byzfl.Median()
    add("mean", "Average", {}, average)
    add("coordinate-median", "Median", {}, median)
    add("trimmed-mean", f"TrMean(f={f})", {"trim_fraction": fraction}, byzfl.TrMean(f=f))
    add("krum", f"Krum(f={f})", {"max_byzantine_fraction": fraction}, byzfl.Krum(f=f))
    add(
        "multi-krum",
        f"MultiKrum(f={f})",
        {"max_byzantine_fraction": fraction},
        byzfl.MultiKrum(f=f),
    )
    add(
        "geometric-median",
        "GeometricMedian(nu=0.1, T=3)",
        {"nu": 0.1, "max_iter": 3},
        byzfl.GeometricMedian(nu=0.1, T=3),
        "both run 3 Weiszfeld iterations",
    )
    add(
        "centered-clipping",
        "CenteredClipping(L=1, tau=100)",
        {"clip_threshold": 100.0, "iterations": 1},
        byzfl.CenteredClipping(L=1, tau=100.0),
    )
    clipping = byzfl.Clipping(c=2.0)
    add(
        "norm-clipping",
        "Average(Clipping(c=2))",
        {"clip_norm": 2.0},
        lambda x: average(clipping(x.copy())),
        "ByzFL clips in place, so it gets a copy (its time includes the copy)",
    )
    if hasattr(byzfl, "NNM"):
        nnm = byzfl.NNM(f=f)
        add(
            "nnm",
            f"Median(NNM(f={f}))",
            {"inner": INNER, "max_byzantine_fraction": fraction},
            lambda x: median(nnm(x)),
        )
    if hasattr(byzfl, "ARC"):
        arc = byzfl.ARC(f=f)
        add(
            "arc",
            f"Median(ARC(f={f}))",
            {"inner": INNER, "max_byzantine_fraction": fraction},
            lambda x: median(arc(x.copy())),
            "ByzFL clips in place, so it gets a copy (its time includes the copy)",
        )
    return pairs


def measure_peers(
    updates: NDArray[np.float32],
    f: int,
    repeats: int,
    names: Sequence[str] | None = None,
    *,
    clock: Clock = time.perf_counter,
    byzfl: types.ModuleType | str | None = None,
) -> list[PeerRow] | str:
    """Time ours and ByzFL's on the same updates for every rule both have.

    ``byzfl`` is the module to compare with (default: :func:`load_byzfl`'s); a string is
    returned as it is, as why there is nothing to compare.
    """
    from byzedge.coordinator.aggregation import build  # noqa: PLC0415

    peer = load_byzfl() if byzfl is None else byzfl
    if isinstance(peer, str):
        return peer
    pairs = peer_pairs(peer, len(updates), f)
    if names is not None:
        pairs = {name: pair for name, pair in pairs.items() if name in names}
    calls: dict[str, Callable[[], object]] = {}
    for name, (_, params, call, _) in pairs.items():
        rule = build(name, **params)
        calls[f"ours:{name}"] = functools.partial(rule, updates)
        calls[f"byzfl:{name}"] = functools.partial(call, updates)
    seconds, errors = time_round_robin(calls, repeats, clock)
    rows = []
    for name, (label, params, _, note) in pairs.items():
        ours, theirs = f"ours:{name}", f"byzfl:{name}"
        if ours in errors or theirs in errors:
            problem = errors.get(ours) or errors.get(theirs) or ""
            rows.append(PeerRow(name, label, float("nan"), float("nan"), 1.0, problem))
            continue
        shown = ", ".join(f"{key}={value}" for key, value in params.items())
        rows.append(
            PeerRow(
                name,
                label,
                statistics.median(seconds[ours]),
                statistics.median(seconds[theirs]),
                PEER_SPEEDUP_TARGETS.get(name, 1.0),
                "; ".join(part for part in (f"ours: {shown}" if shown else "", note) if part),
            )
        )
    return rows


def render_peers(peers: list[PeerRow] | str) -> str:
    """Return the section's Markdown: the table, or why there is none."""
    if isinstance(peers, str):
        return peers
    lines = [
        "Targets: ours faster on every rule, at least 10x faster on `krum`.",
        "",
        "| rule | ByzFL | ours (s) | ByzFL (s) | ours / ByzFL | status | note |",
        "| --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for peer in peers:
        relative = peer.ours / peer.theirs if peer.theirs == peer.theirs else float("nan")
        lines.append(
            f"| {peer.name} | {peer.peer} | {peer.ours:.4f} | {peer.theirs:.4f} "
            f"| {relative:.3f} | {peer.status} | {peer.note} |"
        )
    return "\n".join(lines)


def byzfl_section(
    updates: NDArray[np.float32], f: int, repeats: int, names: Sequence[str] | None
) -> Section:
    """The ByzFL comparison as a :data:`byzedge.bench.Comparison`."""
    return Section(TITLE, render_peers(measure_peers(updates, f, repeats, names)))
