"""Speed and memory benchmarks of the aggregation rules (``byzedge bench aggregators``).

Every rule in :data:`coordinator.aggregation.AGGREGATORS` (pre-aggregators wrap
``coordinate-median``) aggregates the same float32 ``(n, d)`` round, ``f`` of whose rows
are Byzantine, with ``max_byzantine_fraction = f / n``. Timings are medians over
``repeats`` calls, taken round-robin (one call of every rule per repeat) so that load from
other processes on a shared machine hits every rule alike; each rule is reported as a
ratio to ``mean`` measured in the same run, since reading all ``n * d`` values is the floor
every rule pays. The ratios are checked against :data:`TARGETS`.

One optional part: peak memory (tracemalloc) of the streaming path against the batch path
for the rules that stream. Comparisons with other libraries are not part of the package:
:func:`run_aggregators` takes them as :data:`Comparison` callables, each adding one
section to the table (the repository's ``benchmarks/peers.py`` adds ByzFL's timings).

This is a benchmark, not a test: nothing here asserts a timing. The machine (platform,
cores, numpy, the BLAS that threadpoolctl finds) is printed with the table, and the BLAS
environment is used as it is.
"""

from __future__ import annotations

import functools
import os
import platform
import statistics
import time
import tracemalloc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "TARGETS",
    "AggregatorReport",
    "Clock",
    "Comparison",
    "MemoryRow",
    "Section",
    "TimingRow",
    "machine_description",
    "make_updates",
    "measure_memory",
    "measure_rules",
    "render_markdown",
    "rule_params",
    "run_aggregators",
    "time_round_robin",
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
"""Largest allowed ratio of a rule's median time to ``mean``'s (the rules' speed targets)."""

INNER = "coordinate-median"
"""The inner rule the pre-aggregators wrap in the benchmark."""

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

Clock = Callable[[], float]
"""A monotonic clock in seconds (``time.perf_counter``; a fake one in tests)."""


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
class Section:
    """A part of the report added by a :data:`Comparison`: a heading and its Markdown."""

    title: str
    body: str


Comparison = Callable[[NDArray[np.float32], int, int, Sequence[str] | None], Section]
"""``(updates, f, repeats, names) -> Section``: a measurement on the benchmark's round.

Called by :func:`run_aggregators` on the same ``(n, d)`` updates the rules were timed on,
with ``names`` the ``--rules`` selection (``None``: every rule).
"""


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
    sections: list[Section] = field(default_factory=list)
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
    from byzedge.coordinator.aggregation import _compiled, _parallel  # noqa: PLC0415

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
    from byzedge.coordinator.aggregation import parameters  # noqa: PLC0415

    accepted = parameters(name)
    params: dict[str, Any] = {}
    if "max_byzantine_fraction" in accepted:
        params["max_byzantine_fraction"] = f / n
    if "inner" in accepted:
        params["inner"] = INNER
    if "seed" in accepted:
        params["seed"] = 0
    return params


def time_round_robin(
    calls: Mapping[str, Callable[[], object]],
    repeats: int,
    clock: Clock,
    setups: Mapping[str, Callable[[], None]] | None = None,
) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Time every call once per repeat, interleaved, after one untimed warm-up call each.

    Returns the seconds of each call that ran, and ``name -> "ErrorType: message"`` for each
    call whose set-up or warm-up raised (those are not timed).
    """
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
    from byzedge.coordinator.aggregation import AGGREGATORS, build  # noqa: PLC0415

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
    seconds, failed = time_round_robin(calls, repeats, clock)
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
    from byzedge.coordinator.aggregation import AGGREGATORS, build, parameters  # noqa: PLC0415

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


def run_aggregators(
    *,
    n: int = 50,
    d: int = 1_000_000,
    f: int = 10,
    repeats: int = 5,
    seed: int = 0,
    names: Sequence[str] | None = None,
    memory: bool = True,
    comparisons: Sequence[Comparison] = (),
    command: str = "",
) -> AggregatorReport:
    """Run the whole aggregator benchmark and return its report.

    Each of ``comparisons`` runs after the timings, on the same updates, and adds one
    section after the memory table.
    """
    if not (n >= 1 and d >= 1 and 0 <= f < n and repeats >= 1):
        raise ValueError(f"need n >= 1, d >= 1, 0 <= f < n, repeats >= 1; got {n}, {d}, {f}")
    updates = make_updates(n, d, f, seed)
    report = AggregatorReport(n, d, f, repeats, seed, machine_description(), [], command=command)
    report.timings = measure_rules(updates, f, repeats, names)
    report.sections = [compare(updates, f, repeats, names) for compare in comparisons]
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
    for section in report.sections:
        lines += ["", f"## {section.title}", "", section.body]
    return "\n".join(lines) + "\n"
