"""Speed and memory benchmarks of the aggregation rules (``byzedge bench aggregators``).

Every rule in :data:`coordinator.aggregation.AGGREGATORS` (pre-aggregators wrap
``coordinate-median``) aggregates the same float32 ``(n, d)`` round, ``f`` of whose rows
are Byzantine, with ``max_byzantine_fraction = f / n``. Timings are medians over
``repeats`` calls, taken round-robin (one call of every rule per repeat) so that load from
other processes on a shared machine hits every rule alike; each rule is reported as a
ratio to ``mean`` measured in the same run, since reading all ``n * d`` values is the floor
every rule pays. The ratios are checked against the targets of the aggregation issue.

Two optional parts: peak memory (tracemalloc) of the streaming path against the batch
path for the rules that stream, and, when the ByzFL library is importable, our time
against ByzFL's for every rule both have, on the same data in the same run.

This is a benchmark, not a test: nothing here asserts a timing. The machine (platform,
cores, numpy, the BLAS that threadpoolctl finds) is printed with the table, and the BLAS
environment is used as it is.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import platform
import statistics
import sys
import time
import tracemalloc
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "TARGETS",
    "AggregatorReport",
    "MemoryRow",
    "PeerRow",
    "TimingRow",
    "machine_description",
    "make_updates",
    "measure_memory",
    "measure_peers",
    "measure_rules",
    "render_markdown",
    "rule_params",
    "run_aggregators",
]

TARGETS: Mapping[str, float] = {
    "clipping-vr": 3.0,
    "centered-clipping": 3.0,
    "norm-clipping": 3.0,
    "krum": 6.0,
    "multi-krum": 6.0,
    "nnm": 6.0,
    "geometric-median": 10.0,
    "coordinate-median": 12.0,
    "trimmed-mean": 12.0,
    "bulyan": 15.0,
}
"""Largest allowed ratio of a rule's median time to ``mean``'s (issue 3, "Speed")."""

PEER_SPEEDUP_TARGETS: Mapping[str, float] = {"krum": 10.0}
"""Rules that must beat ByzFL by more than 1x: ours must be this many times faster."""

INNER = "coordinate-median"

WHERE_THE_TIME_GOES: Mapping[str, str] = {
    "krum": (
        "one pass builds the n x n Gram matrix (a float32 sgemm per column block, centred "
        "per block so close updates do not cancel): about n/2 multiply-adds per value read, "
        "compute-bound, where the mean does one"
    ),
    "multi-krum": "Krum's Gram pass, then one matrix-vector pass for the average",
    "geometric-median": (
        "Krum's Gram pass plus its projections on the mean (the Weiszfeld iterations then "
        "run on n coefficients), and one pass to form the result"
    ),
    "bulyan": (
        "Krum's Gram pass, exact re-measurement of tied candidates (identical Byzantine "
        "updates tie exactly), and the sorting-network pass for the trimmed window"
    ),
    "centered-clipping": (
        "each of the L = 3 iterations needs the distances to the centre it just moved, so "
        "L + 1 passes over the updates; with iterations = 1 it costs what clipping-vr costs"
    ),
    "clipping-vr": (
        "two passes, distances to the reference then the clipped mean (the radius needs "
        "every distance first); the mean is a single BLAS pass"
    ),
    "nnm": (
        "the mixing alone is n - f multiply-adds per value per update (a 50 x 50 by 50 x d "
        "sgemm writing a new n x d matrix), before the inner coordinate median runs on it"
    ),
}
"""Why a rule costs what it costs, printed under the table for targets not met."""
"""The inner rule the pre-aggregators wrap in the benchmark."""

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class TimingRow:
    """One rule's timings: ``seconds`` per repeat and its ratio to ``mean``'s median."""

    name: str
    params: dict[str, Any]
    seconds: tuple[float, ...]
    ratio: float | None = None
    target: float | None = None
    error: str | None = None

    @property
    def median(self) -> float:
        """Median seconds over the repeats (NaN when the rule failed)."""
        return statistics.median(self.seconds) if self.seconds else float("nan")

    @property
    def status(self) -> str:
        """``met``, ``NOT met (r.rx vs target Tx)``, ``no target`` or the error."""
        if self.error is not None:
            return f"error: {self.error}"
        if self.target is None or self.ratio is None:
            return "no target"
        if self.ratio <= self.target:
            return "met"
        return f"NOT met ({self.ratio:.1f}x vs target {self.target:g}x)"


@dataclass(frozen=True, slots=True)
class MemoryRow:
    """Peak traced memory (bytes) of a round aggregated in batch and streamed."""

    name: str
    batch_peak: int
    streaming_peak: int | None
    note: str = ""


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


@dataclass(slots=True)
class AggregatorReport:
    """Everything one run of the aggregator benchmark measured."""

    n: int
    d: int
    f: int
    repeats: int
    seed: int
    machine: dict[str, str]
    timings: list[TimingRow]
    memory: list[MemoryRow] | str = field(default="not measured")
    peers: list[PeerRow] | str = field(default="not measured")
    command: str = ""


def machine_description() -> dict[str, str]:
    """Return the platform, cores, Python, numpy and BLAS (via threadpoolctl) in use."""
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu count": str(os.cpu_count()),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    try:
        from threadpoolctl import threadpool_info  # noqa: PLC0415
    except ImportError:
        info["blas"] = "unknown (threadpoolctl not installed)"
    else:
        pools = [
            f"{pool.get('internal_api')} {pool.get('version')} "
            f"({pool.get('architecture')}, {pool.get('num_threads')} threads)"
            for pool in threadpool_info()
            if pool.get("user_api") == "blas"
        ]
        info["blas"] = "; ".join(pools) or "none found"
    from coordinator.aggregation import _compiled, _parallel  # noqa: PLC0415

    info["compiled kernels"] = (
        f"numba {_compiled.numba.__version__}"
        if _compiled.AVAILABLE and _compiled.numba is not None
        else "off (numpy paths)"
    )
    info["aggregation threads"] = str(_parallel.worker_count())
    for variable in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS"):
        if variable in os.environ:
            info[variable] = os.environ[variable]
    return info


def make_updates(n: int, d: int, f: int, seed: int = 0) -> NDArray[np.float32]:
    """Return a float32 ``(n, d)`` round: ``n - f`` honest rows, then ``f`` Byzantine ones.

    Honest rows are a shared direction ``g ~ N(0, I)`` plus ``N(0, I)`` noise; Byzantine
    rows are ``-4 g`` plus ``N(0, 4 I)`` noise (a scaled sign flip).
    """
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal(d, dtype=np.float32)  # (d,)
    updates = rng.standard_normal((n, d), dtype=np.float32)  # (n, d)
    updates[: n - f] += direction
    updates[n - f :] *= np.float32(2)
    updates[n - f :] -= np.float32(4) * direction
    return updates


def rule_params(name: str, n: int, f: int) -> dict[str, Any]:
    """Return the benchmark's hyperparameters for rule ``name`` (defaults otherwise)."""
    from coordinator.aggregation import parameters  # noqa: PLC0415

    accepted = parameters(name)
    params: dict[str, Any] = {}
    if "max_byzantine_fraction" in accepted:
        params["max_byzantine_fraction"] = f / n
    if "inner" in accepted:
        params["inner"] = INNER
    if "seed" in accepted:
        params["seed"] = 0
    return params


def _time_round_robin(
    calls: Mapping[str, Callable[[], object]],
    repeats: int,
    clock: Clock,
    setups: Mapping[str, Callable[[], None]] | None = None,
) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Time every call once per repeat, interleaved, after one untimed warm-up call each."""
    setups = setups or {}
    errors: dict[str, str] = {}
    for name, call in calls.items():
        try:
            setups.get(name, lambda: None)()
            call()
        except Exception as error:
            errors[name] = f"{type(error).__name__}: {error}"
    seconds: dict[str, list[float]] = {name: [] for name in calls if name not in errors}
    for _ in range(repeats):
        for name, times in seconds.items():
            setups.get(name, lambda: None)()
            start = clock()
            calls[name]()
            times.append(clock() - start)
    return seconds, errors


def measure_rules(
    updates: NDArray[np.float32],
    f: int,
    repeats: int,
    names: Sequence[str] | None = None,
    clock: Clock = time.perf_counter,
) -> list[TimingRow]:
    """Time every registry rule (or ``names``, always with ``mean``) on ``updates``.

    Stateful rules keep one instance across the repeats, as the coordinator keeps one
    across rounds. Ratios are to ``mean``'s median in this same run.
    """
    from coordinator.aggregation import AGGREGATORS, build  # noqa: PLC0415

    n = len(updates)
    chosen = list(AGGREGATORS) if names is None else list(names)
    if "mean" not in chosen:
        chosen.insert(0, "mean")
    params = {name: rule_params(name, n, f) for name in chosen}
    calls: dict[str, Callable[[], object]] = {}
    errors: dict[str, str] = {}
    for name in chosen:
        try:
            rule = build(name, **params[name])
        except Exception as error:
            errors[name] = f"{type(error).__name__}: {error}"
            continue
        calls[name] = functools.partial(rule, updates)
    seconds, failed = _time_round_robin(calls, repeats, clock)
    errors.update(failed)
    if "mean" not in seconds:
        raise RuntimeError(f"the mean rule failed, so no ratio can be computed: {errors}")
    baseline = statistics.median(seconds["mean"])
    rows = []
    for name in chosen:
        if name in errors:
            rows.append(TimingRow(name, params[name], (), None, TARGETS.get(name), errors[name]))
            continue
        times = tuple(seconds[name])
        ratio = statistics.median(times) / baseline if baseline > 0 else float("inf")
        rows.append(TimingRow(name, params[name], times, ratio, TARGETS.get(name)))
    return rows


def _row_source(d: int, seed: int) -> Callable[[int], NDArray[np.float32]]:
    """Return ``i -> update i`` (float32 ``(d,)``), each made on demand from the seed."""

    def row(index: int) -> NDArray[np.float32]:
        return np.random.default_rng([seed, index]).standard_normal(d, dtype=np.float32)

    return row


def measure_memory(n: int, d: int, seed: int = 0) -> list[MemoryRow] | str:
    """Peak traced memory of a round of ``n`` updates received one by one, per streaming rule.

    Batch: the updates are stacked into an ``(n, d)`` matrix as they arrive, then the rule
    runs. Streaming: each update goes to ``accumulate`` as it arrives, then ``finish``.
    Rules with a radius get a fixed one (``clip_norm`` / ``clip_threshold`` = 1), since
    a median radius is known only once the whole round is in.
    """
    from coordinator.aggregation import AGGREGATORS, build, parameters  # noqa: PLC0415

    streaming = [
        name
        for name, cls in AGGREGATORS.items()
        if all(callable(getattr(cls, m, None)) for m in ("accumulate", "finish"))
    ]
    if not streaming:
        return "streaming path not available (no rule has accumulate/finish)"
    row = _row_source(d, seed)
    rows = []
    for name in streaming:
        accepted = parameters(name)
        params = {key: 1.0 for key in ("clip_norm", "clip_threshold") if key in accepted}
        tracemalloc.start()
        matrix = np.empty((n, d), dtype=np.float32)
        for index in range(n):
            matrix[index] = row(index)
        build(name, **params)(matrix)
        del matrix
        batch_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        rule: Any = build(name, **params)
        tracemalloc.start()
        note = ""
        streaming_peak: int | None
        try:
            for index in range(n):
                rule.accumulate(row(index))
            rule.finish()
            streaming_peak = tracemalloc.get_traced_memory()[1]
        except Exception as error:
            streaming_peak, note = None, f"{type(error).__name__}: {error}"
        tracemalloc.stop()
        if params:
            note = note or ", ".join(f"{key}={value:g}" for key, value in params.items())
        rows.append(MemoryRow(name, batch_peak, streaming_peak, note))
    return rows


def _load_byzfl() -> types.ModuleType | str:
    """Return ``byzfl.aggregators``, or why it cannot be imported.

    ``import byzfl`` also imports its training framework and so torchvision; where that
    fails (a CUDA torchvision next to a CPU torch) the aggregators, which need only
    numpy, torch and scipy, are loaded without the package's ``__init__``.
    """
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


def _peer_pairs(
    byzfl: types.ModuleType, n: int, f: int
) -> dict[str, tuple[str, dict[str, Any], Callable[[NDArray[np.float32]], object], str]]:
    """Map our rule -> (ByzFL name, our params, ByzFL call, note) for every shared rule."""
    from coordinator.aggregation import AGGREGATORS  # noqa: PLC0415

    pairs: dict[str, tuple[str, dict[str, Any], Callable[[NDArray[np.float32]], object], str]]
    pairs = {}
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
    clock: Clock = time.perf_counter,
) -> list[PeerRow] | str:
    """Time ours and ByzFL's on the same updates for every rule both have."""
    from coordinator.aggregation import build  # noqa: PLC0415

    byzfl = _load_byzfl()
    if isinstance(byzfl, str):
        return byzfl
    pairs = _peer_pairs(byzfl, len(updates), f)
    if names is not None:
        pairs = {name: pair for name, pair in pairs.items() if name in names}
    calls: dict[str, Callable[[], object]] = {}
    for name, (_, params, call, _) in pairs.items():
        rule = build(name, **params)
        calls[f"ours:{name}"] = functools.partial(rule, updates)
        calls[f"byzfl:{name}"] = functools.partial(call, updates)
    seconds, errors = _time_round_robin(calls, repeats, clock)
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


def run_aggregators(
    *,
    n: int = 50,
    d: int = 1_000_000,
    f: int = 10,
    repeats: int = 5,
    seed: int = 0,
    names: Sequence[str] | None = None,
    memory: bool = True,
    peers: bool = True,
    command: str = "",
) -> AggregatorReport:
    """Run the whole aggregator benchmark and return its report."""
    if not (n >= 1 and d >= 1 and 0 <= f < n and repeats >= 1):
        raise ValueError(f"need n >= 1, d >= 1, 0 <= f < n, repeats >= 1; got {n}, {d}, {f}")
    updates = make_updates(n, d, f, seed)
    report = AggregatorReport(n, d, f, repeats, seed, machine_description(), [], command=command)
    report.timings = measure_rules(updates, f, repeats, names)
    if peers:
        report.peers = measure_peers(updates, f, repeats, names)
    del updates
    if memory:
        report.memory = measure_memory(n, d, seed)
    return report


def _mib(size: int | None) -> str:
    return "-" if size is None else f"{size / 2**20:,.1f} MiB"


def render_markdown(report: AggregatorReport) -> str:
    """Return the report as the Markdown committed to ``benchmarks/results/``."""
    lines = [
        "# Aggregator speed",
        "",
        f"n = {report.n} updates, d = {report.d:,} float32, f = {report.f} Byzantine "
        f"(max_byzantine_fraction = f/n = {report.f / report.n:g}); median of "
        f"{report.repeats} timed calls per rule after one warm-up, taken round-robin; "
        "ratios are to `mean` in the same run. Pre-aggregators wrap "
        f"`{INNER}`. Data: `byzedge.bench.make_updates` (seed {report.seed}).",
        "",
    ]
    if report.command:
        lines += [f"Command: `{report.command}`", ""]
    lines += ["Machine:", ""]
    lines += [f"- {key}: {value}" for key, value in report.machine.items()]
    lines += [
        "",
        "| rule | parameters | median (s) | x mean | target | status |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for row in report.timings:
        params = ", ".join(f"{key}={value!r}" for key, value in row.params.items()) or "-"
        median = "-" if row.error else f"{row.median:.4f}"
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}x"
        target = "-" if row.target is None else f"<= {row.target:g}x"
        lines.append(f"| {row.name} | {params} | {median} | {ratio} | {target} | {row.status} |")
    missed = [
        row.name
        for row in report.timings
        if row.status.startswith("NOT met") and row.name in WHERE_THE_TIME_GOES
    ]
    if missed:
        lines += ["", "Where the time goes in the rules that miss their target:", ""]
        lines += [f"- `{name}`: {WHERE_THE_TIME_GOES[name]}." for name in missed]
    lines += ["", "## Streaming against batch: peak memory (tracemalloc)", ""]
    if isinstance(report.memory, str):
        lines.append(report.memory)
    else:
        lines += [
            "Batch holds the round's n x d matrix; streaming adds each update to O(d) sums.",
            "",
            "| rule | batch peak | streaming peak | batch / streaming | note |",
            "| --- | ---: | ---: | ---: | --- |",
        ]
        for mem in report.memory:
            factor = f"{mem.batch_peak / mem.streaming_peak:.1f}x" if mem.streaming_peak else "-"
            lines.append(
                f"| {mem.name} | {_mib(mem.batch_peak)} | {_mib(mem.streaming_peak)} "
                f"| {factor} | {mem.note} |"
            )
    lines += ["", "## Against ByzFL (same data, same run)", ""]
    if isinstance(report.peers, str):
        lines.append(report.peers)
    else:
        lines += [
            "Targets: ours faster on every rule, at least 10x faster on `krum`.",
            "",
            "| rule | ByzFL | ours (s) | ByzFL (s) | ours / ByzFL | status | note |",
            "| --- | --- | ---: | ---: | ---: | --- | --- |",
        ]
        for peer in report.peers:
            relative = peer.ours / peer.theirs if peer.theirs == peer.theirs else float("nan")
            lines.append(
                f"| {peer.name} | {peer.peer} | {peer.ours:.4f} | {peer.theirs:.4f} "
                f"| {relative:.3f} | {peer.status} | {peer.note} |"
            )
    return "\n".join(lines) + "\n"
