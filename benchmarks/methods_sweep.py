"""Issue 10, evidence item 5: every training method in the worst-case sweep and label-sorted.

Usage::

    python benchmarks/methods_sweep.py [--work build/methods-sweep] [--workers 2]
                                       [--skip-compressed] [--print]
                                       [--out benchmarks/results/methods_sweep.md]

Every figure comes from a ``byzedge sim matrix --base BASE.toml ...`` command (printed
before it runs, and listed in the report); the base scenario selects the method and its
hyper-parameters (``benchmarks/results/methods_sweep_bases/*.toml``, written by this
script). Three experiments, for FedAvg (the reference) and each of byz-vr-marina,
byz-vr-marina-pp, byz-ef21, byz-ef21-bc, byz-dasha-page and clip21-sgd2m:

worst
    robustness.md's experiment 6: 25 devices, IID, 20 rounds, the eight attacks
    (sign-flip, label-flip, gaussian-noise, alie, ipm, min-max, optimal-alie, mimic) at
    fractions 0.05, 0.1, 0.2, 0.3, bare rules given the true fraction
    (``--no-reputation --defenses-know-fraction``), dense uplink, with three rules: the
    coordinate-wise median over buckets of 2 (the MARINA paper's), the geometric median and
    ``clipping-vr``. Reported: the worst final accuracy over the attacks per (method, rule,
    fraction) and the attack that achieved it.
compressed
    The same sweep with each method's compressed codec at 10 % (rand-k on a round-shared
    support for MARINA, MARINA-PP and DASHA; top-k with error feedback for EF21, EF21-BC
    and Clip21-SGD2M), bucketed coordinate median only.
label-sorted
    robustness.md section 3's fleet (25 devices, label-sorted, 30 rounds) under bit-flip
    (``sign-flip`` with factor 1, ``-u``) on 20 % of the devices, the three rules; once
    with the compromised devices on their own shards (section 3) and once with them
    sampling IID (``--byzantine-data iid``, section 2's set-up).

Writes the Markdown report, a JSON file (every cell's final accuracy, the commands, the
bases) and a PNG heat map beside it, with the machine it ran on. The per-command folders
(``matrix.json``, ``heatmap.png``, ``report.md`` of each sweep) go under ``--work``.
"""

# The report writes the papers' notation.
# ruff: noqa: RUF001

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reputation import _machine

OUT = Path("benchmarks/results/methods_sweep.md")
BASES = Path("benchmarks/results/methods_sweep_bases")
WORK = Path("build/methods-sweep")

FEDAVG = "fedavg"
METHOD_NAMES = (
    "byz-vr-marina",
    "byz-vr-marina-pp",
    "byz-ef21",
    "byz-ef21-bc",
    "byz-dasha-page",
    "clip21-sgd2m",
)
ATTACKS = (
    "sign-flip",
    "label-flip",
    "gaussian-noise",
    "alie",
    "ipm",
    "min-max",
    "optimal-alie",
    "mimic",
)
FRACTIONS = (0.05, 0.1, 0.2, 0.3)
RULES = ("bucketing+coordinate-median", "geometric-median", "clipping-vr")
COMPRESSED_RULE = "bucketing+coordinate-median"
LABEL_FRACTION = 0.2

# Hyper-parameters chosen on the clean IID run (20 rounds, bucketed CM) before the sweep:
# gamma in {0.3, 0.5, 0.7, 1.0} for the gradient methods (0.7 is the largest that does not
# oscillate; 1.0 ends at 0.59 for MARINA), Clip21-SGD2M's momenta 0.5 and radius 5 so that
# it learns in 20 rounds. Unset keys are the methods' defaults (p = 0.1, minibatch 32,
# full local gradients in full rounds, MARINA-PP's clip multiplier 1).
CLIP21 = {"momentum1": 0.5, "momentum2": 0.5, "clip_norm": 5.0}
DENSE: dict[str, dict[str, Any]] = {
    "byz-vr-marina": {"method": {"step_size": 0.7}},
    "byz-vr-marina-pp": {"method": {"step_size": 0.7}},
    "byz-ef21": {"method": {"step_size": 0.7}},
    "byz-ef21-bc": {"method": {"step_size": 0.7}},
    "byz-dasha-page": {"method": {"step_size": 0.7}},
    "clip21-sgd2m": {"method": {"step_size": 1.0, **CLIP21}},
}
# With the codec: DASHA at 0.7 diverges in its last rounds under rand-k (0.87 -> 0.53), so
# 0.5; Clip21-SGD2M with top-k at 1.0 reaches 0.80 and at 1.5 0.86, so 1.5.
COMPRESSED: dict[str, dict[str, Any]] = {
    "byz-vr-marina": {"compression": "rand-k", "method": {"step_size": 0.7}},
    "byz-vr-marina-pp": {"compression": "rand-k", "method": {"step_size": 0.7}},
    "byz-ef21": {"compression": "top-k", "method": {"step_size": 0.7}},
    "byz-ef21-bc": {"compression": "top-k", "method": {"step_size": 0.7}},
    "byz-dasha-page": {"compression": "rand-k", "method": {"step_size": 0.5}},
    "clip21-sgd2m": {"compression": "top-k", "method": {"step_size": 1.5, **CLIP21}},
}
SPARSITY = 0.1

COMMON = ["--devices", "25", "--seed", "0", "--no-reputation", "--defenses-know-fraction"]


@dataclass(frozen=True, slots=True)
class Sweep:
    """One ``byzedge sim matrix`` command."""

    experiment: str  # worst | compressed | label-sorted | label-sorted-byz-iid
    algorithm: str
    base: Path
    args: tuple[str, ...]

    @property
    def out(self) -> Path:
        return WORK / self.experiment / self.algorithm

    def command(self, workers: int) -> list[str]:
        return [
            "byzedge",
            "sim",
            "matrix",
            "--base",
            str(self.base),
            *self.args,
            "--workers",
            str(workers),
            "--out",
            str(self.out),
        ]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return repr(value)


def base_toml(algorithm: str, settings: dict[str, Any]) -> str:
    """The scenario TOML that selects ``algorithm`` with ``settings``."""
    lines = [f"# {algorithm}: base scenario of benchmarks/methods_sweep.py", ""]
    lines.append(f"algorithm = {_toml_value(algorithm)}")
    for key, value in settings.items():
        lines.append(f"{key} = {_toml_value(value)}")
    if "compression" in settings:
        lines.append(f"sparsity = {SPARSITY!r}")
    return "\n".join(lines) + "\n"


def write_bases() -> dict[str, Path]:
    """Write the base scenarios; return ``{label: path}`` (label ``alg`` or ``alg+codec``)."""
    BASES.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    entries: list[tuple[str, str, dict[str, Any]]] = [(FEDAVG, FEDAVG, {})]
    entries += [(name, name, DENSE[name]) for name in METHOD_NAMES]
    entries += [
        (f"{name}+{COMPRESSED[name]['compression']}", name, COMPRESSED[name])
        for name in METHOD_NAMES
    ]
    for label, algorithm, settings in entries:
        path = BASES / f"{label}.toml"
        path.write_text(base_toml(algorithm, settings))
        paths[label] = path
    return paths


def sweeps(bases: dict[str, Path], *, compressed: bool) -> list[Sweep]:
    """Every command, in the order they run."""
    worst = (
        "--rounds",
        "20",
        "--partition",
        "iid",
        "--fractions",
        ",".join(str(f) for f in FRACTIONS),
        "--attacks",
        ",".join(ATTACKS),
        *COMMON,
    )
    label = (
        "--rounds",
        "30",
        "--partition",
        "label-sorted",
        "--fractions",
        str(LABEL_FRACTION),
        "--attacks",
        "sign-flip",
        "--attack-params",
        '{"sign-flip": {"factor": 1.0}}',
        "--defenses",
        ",".join(RULES),
        *COMMON,
    )
    out: list[Sweep] = []
    for algorithm in (FEDAVG, *METHOD_NAMES):
        out.append(
            Sweep("worst", algorithm, bases[algorithm], (*worst, "--defenses", ",".join(RULES)))
        )
    for algorithm in (FEDAVG, *METHOD_NAMES):
        out.append(Sweep("label-sorted", algorithm, bases[algorithm], label))
        out.append(
            Sweep(
                "label-sorted-byz-iid",
                algorithm,
                bases[algorithm],
                (*label, "--byzantine-data", "iid"),
            )
        )
    if compressed:
        for algorithm in METHOD_NAMES:
            key = f"{algorithm}+{COMPRESSED[algorithm]['compression']}"
            out.append(
                Sweep("compressed", key, bases[key], (*worst, "--defenses", COMPRESSED_RULE))
            )
    return out


# -- reading the sweeps ----------------------------------------------------------------------


def load(sweep: Sweep) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((sweep.out / "matrix.json").read_text())
    return document


def clean(document: dict[str, Any], rule: str) -> float | None:
    for run in document["runs"]:
        if run["attack"] is None and run["defense"] == rule:
            value: float | None = run["final_accuracy"]
            return value
    return None


def worst(document: dict[str, Any], rule: str, fraction: float) -> tuple[float | None, str]:
    """The lowest final accuracy over the attacks and its attack (a failed cell counts as 0)."""
    cells = [
        c
        for c in document["cells"]
        if c["defense"] == rule and abs(c["byzantine_fraction"] - fraction) < 1e-9
    ]
    if not cells:
        return None, "-"
    cell = min(cells, key=lambda c: c["final_accuracy"] if c["final_accuracy"] is not None else 0)
    value = cell["final_accuracy"]
    return (value if value is not None else 0.0), (
        cell["attack"] if value is not None else f"{cell['attack']} failed"
    )


def cell(document: dict[str, Any], rule: str, attack: str, fraction: float) -> float | None:
    for c in document["cells"]:
        if (
            c["defense"] == rule
            and c["attack"] == attack
            and abs(c["byzantine_fraction"] - fraction) < 1e-9
        ):
            value: float | None = c["final_accuracy"]
            return value
    return None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _label(algorithm: str) -> str:
    return "FedAvg" if algorithm == FEDAVG else f"`{algorithm}`"


# -- report ----------------------------------------------------------------------------------


def worst_table(
    docs: dict[str, dict[str, Any]], rules: Sequence[str], order: Sequence[str]
) -> list[str]:
    lines = [
        "| method | rule | clean | "
        + " | ".join(f"f = {f}" for f in FRACTIONS)
        + " | largest drop from clean |",
        "|---|---|---:|" + "---:|" * len(FRACTIONS) + "---:|",
    ]
    for rule in rules:
        for algorithm in order:
            if algorithm not in docs:
                continue
            doc = docs[algorithm]
            base = clean(doc, rule)
            if base is None:
                continue
            entries = [worst(doc, rule, f) for f in FRACTIONS]
            drops = [base - v for v, _ in entries if v is not None]
            row = [
                _label(algorithm),
                f"`{rule}`",
                _pct(base),
                *(f"{_pct(v)} ({a})" for v, a in entries),
                f"{100 * max(drops):.1f}" if drops else "-",
            ]
            lines.append("| " + " | ".join(row) + " |")
    return lines


def delta_table(docs: dict[str, dict[str, Any]]) -> list[str]:
    """Worst case minus FedAvg's worst case with the same rule and fraction (points)."""
    fedavg = docs[FEDAVG]
    lines = [
        "| method | rule | clean | " + " | ".join(f"f = {f}" for f in FRACTIONS) + " |",
        "|---|---|---:|" + "---:|" * len(FRACTIONS),
    ]
    for rule in RULES:
        for algorithm in METHOD_NAMES:
            doc = docs[algorithm]
            values = [clean(doc, rule), *(worst(doc, rule, f)[0] for f in FRACTIONS)]
            refs = [clean(fedavg, rule), *(worst(fedavg, rule, f)[0] for f in FRACTIONS)]
            row = [_label(algorithm), f"`{rule}`"]
            for value, ref in zip(values, refs, strict=True):
                row.append("-" if value is None or ref is None else f"{100 * (value - ref):+.1f}")
            lines.append("| " + " | ".join(row) + " |")
    return lines


def label_table(own: dict[str, dict[str, Any]], byz_iid: dict[str, dict[str, Any]]) -> list[str]:
    head = ["method"]
    for rule in RULES:
        head += [f"`{rule}` clean", "bit-flip", "bit-flip, Byz. data IID"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for algorithm in (FEDAVG, *METHOD_NAMES):
        row = [_label(algorithm)]
        for rule in RULES:
            row += [
                _pct(clean(own[algorithm], rule)),
                _pct(cell(own[algorithm], rule, "sign-flip", LABEL_FRACTION)),
                _pct(cell(byz_iid[algorithm], rule, "sign-flip", LABEL_FRACTION)),
            ]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def per_attack_table(docs: dict[str, dict[str, Any]], rule: str, fraction: float) -> list[str]:
    """Final accuracy (%) per attack (rows) and method (columns) for one rule and fraction."""
    order = (FEDAVG, *METHOD_NAMES)
    lines = [
        "| attack | " + " | ".join(_label(a) for a in order) + " |",
        "|---|" + "---:|" * len(order),
    ]
    for attack in ATTACKS:
        row = [attack, *(_pct(cell(docs[a], rule, attack, fraction)) for a in order)]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def findings(
    docs: dict[str, dict[str, Any]],
    own: dict[str, dict[str, Any]],
    byz_iid: dict[str, dict[str, Any]],
    compressed: dict[str, dict[str, Any]],
) -> list[str]:
    """Where a method does worse than FedAvg with the same rule (more than 2 points)."""
    out: list[str] = []
    fedavg = docs[FEDAVG]
    for algorithm in METHOD_NAMES:
        doc = docs[algorithm]
        parts: list[str] = []
        for rule in RULES:
            gaps = []
            for f in FRACTIONS:
                value, attack = worst(doc, rule, f)
                ref, ref_attack = worst(fedavg, rule, f)
                if value is not None and ref is not None and ref - value > 0.02:
                    gaps.append(f"f = {f}: {_pct(value)} ({attack}) vs {_pct(ref)} ({ref_attack})")
            base, ref_base = clean(doc, rule), clean(fedavg, rule)
            drop = max(base - (worst(doc, rule, f)[0] or 0.0) for f in FRACTIONS) if base else 0
            ref_drop = (
                max(ref_base - (worst(fedavg, rule, f)[0] or 0.0) for f in FRACTIONS)
                if ref_base
                else 0
            )
            parts.append(
                f"`{rule}`: clean {_pct(base)} vs {_pct(ref_base)}; largest drop from clean "
                f"{100 * drop:.1f} vs {100 * ref_drop:.1f} points"
                + (
                    f"; worst case below FedAvg's by > 2 points at {'; '.join(gaps)}"
                    if gaps
                    else ""
                )
            )
        out.append(f"- {_label(algorithm)}: " + ". ".join(parts) + ".")
    for name, docs_ls in (("own shards", own), ("Byzantine data IID", byz_iid)):
        worse = []
        for algorithm in METHOD_NAMES:
            for rule in RULES:
                value = cell(docs_ls[algorithm], rule, "sign-flip", LABEL_FRACTION)
                ref = cell(docs_ls[FEDAVG], rule, "sign-flip", LABEL_FRACTION)
                if value is not None and ref is not None and ref - value > 0.02:
                    worse.append(f"{_label(algorithm)} + `{rule}` {_pct(value)} vs {_pct(ref)}")
        out.append(
            f"- Label-sorted, bit-flip at {LABEL_FRACTION}, {name}: "
            + (
                "below FedAvg + the same rule by > 2 points: " + "; ".join(worse) + "."
                if worse
                else "no method is more than 2 points below FedAvg + the same rule."
            )
        )
    for key, doc in compressed.items():
        algorithm = key.split("+", 1)[0]
        dense = docs[algorithm]
        base, dense_base = clean(doc, COMPRESSED_RULE), clean(dense, COMPRESSED_RULE)
        w = [worst(doc, COMPRESSED_RULE, f)[0] for f in FRACTIONS]
        wd = [worst(dense, COMPRESSED_RULE, f)[0] for f in FRACTIONS]
        out.append(
            f"- `{key}` 10 % with `{COMPRESSED_RULE}`: clean {_pct(base)} (dense "
            f"{_pct(dense_base)}), worst case {' / '.join(_pct(v) for v in w)} (dense "
            f"{' / '.join(_pct(v) for v in wd)}) at f = {' / '.join(str(f) for f in FRACTIONS)}."
        )
    return out


def plot(
    docs: dict[str, dict[str, Any]],
    own: dict[str, dict[str, Any]],
    byz_iid: dict[str, dict[str, Any]],
    path: Path,
) -> bool:
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
        import numpy as np  # noqa: PLC0415
    except ImportError:
        return False
    order = (FEDAVG, *METHOD_NAMES)
    fig, axes = plt.subplots(1, len(RULES) + 1, figsize=(6 * (len(RULES) + 1), 6.5))
    image = None
    for ax, rule in zip(axes, RULES, strict=False):
        grid = np.full((len(order), len(FRACTIONS) + 1), np.nan)
        for i, algorithm in enumerate(order):
            doc = docs[algorithm]
            values = [clean(doc, rule), *(worst(doc, rule, f)[0] for f in FRACTIONS)]
            grid[i] = [np.nan if v is None else 100 * v for v in values]
        image = ax.imshow(grid, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(FRACTIONS) + 1), ["clean", *(str(f) for f in FRACTIONS)])
        ax.set_yticks(range(len(order)), list(order) if ax is axes[0] else [])
        ax.set_title(f"worst case over 8 attacks, {rule}", fontsize=9)
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, "-" if np.isnan(v) else f"{v:.1f}", ha="center", va="center", fontsize=8)
    ax = axes[-1]
    columns = [(r, d) for r in RULES for d in ("own", "iid")]
    grid = np.full((len(order), len(columns)), np.nan)
    for i, algorithm in enumerate(order):
        for j, (rule, data) in enumerate(columns):
            doc = own[algorithm] if data == "own" else byz_iid[algorithm]
            v = cell(doc, rule, "sign-flip", LABEL_FRACTION)
            grid[i, j] = np.nan if v is None else 100 * v
    image = ax.imshow(grid, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")
    short = {"bucketing+coordinate-median": "bCM", "geometric-median": "GM", "clipping-vr": "cVR"}
    ax.set_xticks(range(len(columns)), [f"{short[r]}\n{d}" for r, d in columns], fontsize=8)
    ax.set_yticks(range(len(order)), list(order) if ax is axes[0] else [])
    ax.set_title("label-sorted, bit-flip 20% (Byz. data own / iid)", fontsize=9)
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, "-" if np.isnan(v) else f"{v:.1f}", ha="center", va="center", fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.7, label="final accuracy (%)")
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return True


def hyper_parameters() -> list[str]:
    lines = [
        "| method | dense | compressed (10 %) |",
        "|---|---|---|",
        "| FedAvg | 2 local epochs, lr 0.3, batch 8 (the simulator's defaults) | - |",
    ]
    for name in METHOD_NAMES:
        dense = ", ".join(f"{k} {v}" for k, v in DENSE[name]["method"].items())
        comp = COMPRESSED[name]
        compressed = f"{comp['compression']}, " + ", ".join(
            f"{k} {v}" for k, v in comp["method"].items()
        )
        lines.append(f"| `{name}` | {dense} | {compressed} |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0915 - one report
    """Run every sweep and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-compressed", action="store_true")
    parser.add_argument("--print", action="store_true", help="print the commands only")
    parser.add_argument("--report-only", action="store_true", help="read the sweeps' folders")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    given = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--report-only"]
    command = shlex.join(["python", "benchmarks/methods_sweep.py", *given])
    bases = write_bases()
    plan = sweeps(bases, compressed=not args.skip_compressed)
    started = time.monotonic()
    durations: dict[str, float] = {}
    for sweep in plan:
        line = sweep.command(args.workers)
        print("$", shlex.join(line), flush=True)
        if args.print or args.report_only:
            continue
        t0 = time.monotonic()
        binary = Path(sys.executable).parent / "byzedge"
        subprocess.run([str(binary), *line[1:]], check=True, stderr=subprocess.DEVNULL)
        durations[f"{sweep.experiment}/{sweep.algorithm}"] = time.monotonic() - t0
        print(f"  {durations[f'{sweep.experiment}/{sweep.algorithm}']:.0f} s", flush=True)
    if args.print:
        return 0
    wall = time.monotonic() - started
    previous = args.out.with_suffix(".json")
    if args.report_only and previous.exists():  # keep the timings of the run that measured
        kept = json.loads(previous.read_text())
        wall, durations = kept["wall_seconds"], kept["durations_s"]
    docs = {s.algorithm: load(s) for s in plan if s.experiment == "worst"}
    own = {s.algorithm: load(s) for s in plan if s.experiment == "label-sorted"}
    byz_iid = {s.algorithm: load(s) for s in plan if s.experiment == "label-sorted-byz-iid"}
    compressed = {s.algorithm: load(s) for s in plan if s.experiment == "compressed"}

    clean_rows = [
        "| method | " + " | ".join(f"`{r}`" for r in RULES) + " | compressed, bucketed CM |",
        "|---|" + "---:|" * (len(RULES) + 1),
    ]
    for algorithm in (FEDAVG, *METHOD_NAMES):
        key = next((k for k in compressed if k.split("+", 1)[0] == algorithm), None)
        clean_rows.append(
            f"| {_label(algorithm)} | "
            + " | ".join(_pct(clean(docs[algorithm], r)) for r in RULES)
            + f" | {_pct(clean(compressed[key], COMPRESSED_RULE)) if key else '-'} |"
        )
    worst_lines = worst_table(docs, RULES, (FEDAVG, *METHOD_NAMES))
    delta_lines = delta_table(docs)
    comp_order = [FEDAVG]
    comp_docs = {FEDAVG: docs[FEDAVG]}
    for name in METHOD_NAMES:
        comp_docs[name] = docs[name]
        comp_order.append(name)
        key = next((k for k in compressed if k.split("+", 1)[0] == name), None)
        if key:
            comp_docs[key] = compressed[key]
            comp_order.append(key)
    comp_lines = worst_table(comp_docs, (COMPRESSED_RULE,), comp_order) if compressed else []
    label_lines = label_table(own, byz_iid)
    finding_lines = findings(docs, own, byz_iid, compressed)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    png = args.out.with_suffix(".png")
    drawn = plot(docs, own, byz_iid, png)
    commands = [shlex.join(s.command(args.workers)) for s in plan]
    document: dict[str, Any] = {
        "command": command,
        "wall_seconds": wall,
        "durations_s": durations,
        "bases": {label: path.read_text() for label, path in bases.items()},
        "commands": commands,
        "sweeps": [
            {
                "experiment": s.experiment,
                "algorithm": s.algorithm,
                "command": shlex.join(s.command(args.workers)),
                "clean": [r for r in load(s)["runs"] if r["attack"] is None],
                "cells": [
                    {k: c[k] for k in ("attack", "defense", "byzantine_fraction", "final_accuracy")}
                    for c in load(s)["cells"]
                ],
            }
            for s in plan
        ],
    }
    args.out.with_suffix(".json").write_text(json.dumps(document, indent=1) + "\n")
    lines = [
        "# Every training method in the worst-case sweep and on label-sorted data (issue 10, "
        "item 5)",
        "",
        f"Command: `{command}`",
        "",
        f"Wall time: {wall / 60:.1f} min, `byzedge sim matrix` with {args.workers} worker "
        "processes (one torch thread each).",
        "",
        "Machine:",
        "",
        *_machine(),
        "",
        "In-memory simulator (`byzedge sim matrix`), digits MLP (4,810 parameters), seed 0, "
        "one seed per cell (robustness.md: differences below 2 points are noise where a "
        "rule holds). Bare rules (`--no-reputation`, anomaly scoring still on) given the "
        "true Byzantine fraction. Colluding attacks (ALIE, IPM, min-max, optimal-ALIE, "
        "mimic) forge each method's message from the honest messages of the same kind; "
        "device-local ones (sign-flip, gaussian-noise) rewrite the device's message; "
        "label-flip devices run the method honestly on `9 - y`.",
        "",
        "## Hyper-parameters",
        "",
        "Chosen on the clean IID run (20 rounds, bucketed CM) before the sweep. Unset keys "
        "are each method's defaults: p = 0.1, minibatch 32, full local gradients in full "
        "rounds, MARINA-PP's clip multiplier 1, DASHA's a = 1/(2ω+1). γ = 1.0 makes MARINA "
        "oscillate (0.59 final); with rand-k DASHA diverges in its last rounds at γ = 0.7 "
        "(0.53). The methods take one gradient step per round where FedAvg runs 2 local "
        "epochs (about 14 SGD steps), so after 20 rounds they sit 6–12 points below "
        "FedAvg even without attack.",
        "",
        *hyper_parameters(),
        "",
        "Base scenarios: `benchmarks/results/methods_sweep_bases/*.toml`.",
        "",
        "Clean final accuracy (%), IID, 20 rounds:",
        "",
        *clean_rows,
        "",
        "## Findings",
        "",
        *finding_lines,
        "",
        "## Worst case over the eight attacks, IID, dense",
        "",
        "Final accuracy (%) and the attack that achieved it:",
        "",
        *worst_lines,
        "",
        "Method minus FedAvg with the same rule and fraction (points; clean, then worst case):",
        "",
        *delta_lines,
        "",
    ]
    for rule in RULES:
        for fraction in (0.2, 0.3):
            lines += [
                f"Per attack, `{rule}`, f = {fraction}:",
                "",
                *per_attack_table(docs, rule, fraction),
                "",
            ]
    if comp_lines:
        lines += [
            "## Compressed uplink (10 %), bucketed coordinate median",
            "",
            *comp_lines,
            "",
        ]
    lines += [
        f"## Label-sorted, bit-flip (`sign-flip` factor 1) on {int(100 * LABEL_FRACTION)} %",
        "",
        "robustness.md section 3's fleet: 25 devices, label-sorted, 30 rounds. Final "
        "accuracy (%); 'Byz. data IID' is `--byzantine-data iid` (section 2's set-up):",
        "",
        *label_lines,
        "",
        "## Commands",
        "",
        "```",
        *commands,
        "```",
        "",
    ]
    if drawn:
        lines += [f"![methods sweep]({png.name})", ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines[lines.index("## Findings") :]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
