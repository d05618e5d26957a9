"""Attack x defense x Byzantine-fraction sweeps of the in-memory simulator.

:func:`run_matrix` runs one :class:`~fleet_sim.scenario.Scenario` per cell in a process
pool (torch limited to one thread per worker, so two workers fill a 2-core machine), plus
one clean run per defense (no attack, fraction 0) whose accuracy every cell of that
defense is compared with. :func:`write_matrix` writes ``matrix.json``, ``heatmap.png`` and
``report.md``.

``matrix.json``::

    {"cells": [{"attack", "defense", "byzantine_fraction", "final_accuracy",
                "clean_accuracy", "flag_precision", "flag_recall", "backdoor_success"}],
     "options": {...}}

with ``null`` where a figure does not apply (no flags raised, no backdoor attack).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from byzedge.fleet_sim.scenario import Scenario

__all__ = ["CELL_KEYS", "MatrixSpec", "run_matrix", "worst_case", "write_matrix"]

CELL_KEYS = (
    "attack",
    "defense",
    "byzantine_fraction",
    "final_accuracy",
    "clean_accuracy",
    "flag_precision",
    "flag_recall",
    "backdoor_success",
)
"""The documented keys of each cell of ``matrix.json``."""

Key = tuple[str | None, str, float]


@dataclass(frozen=True, slots=True)
class MatrixSpec:
    """A sweep: every attack x defense x fraction on one base scenario."""

    base: Scenario
    attacks: tuple[str, ...]
    defenses: tuple[str, ...]
    fractions: tuple[float, ...]
    defense_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    attack_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    defenses_know_fraction: bool = False

    def clean_scenario(self, defense: str) -> Scenario:
        """The defense's run without attack."""
        return self._scenario(None, defense, 0.0)

    def cell_scenario(self, attack: str, defense: str, fraction: float) -> Scenario:
        """The scenario of one cell."""
        return self._scenario(attack, defense, fraction)

    def _scenario(self, attack: str | None, defense: str, fraction: float) -> Scenario:
        aggregation = dict(self.base.aggregation) if defense == self.base.defense else {}
        aggregation.update(self.defense_params.get(defense, {}))
        attack_params = dict(self.base.attack_params) if attack == self.base.attack else {}
        if attack is not None:
            attack_params.update(self.attack_params.get(attack, {}))
        assumed = self.base.max_byzantine_fraction
        if self.defenses_know_fraction and fraction > 0:
            assumed = min(fraction, 0.49)
        return self.base.with_changes(
            max_byzantine_fraction=assumed,
            name=f"{attack or 'clean'}/{defense}/{fraction}",
            attack=attack,
            attack_params=attack_params if attack else {},
            defense=defense,
            aggregation=aggregation,
            byzantine_fraction=fraction,
            fault_plan=None,
        )


def _init_worker(log_level: int = logging.ERROR) -> None:
    # A spawned worker has no logging set up: without this, every fallback warning of
    # every round would reach stderr through logging's last-resort handler.
    logging.basicConfig(level=log_level)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch  # noqa: PLC0415 - in the worker only

    torch.set_num_threads(1)


def _run_one(payload: dict[str, Any]) -> dict[str, Any]:
    from byzedge.fleet_sim.simulator import run_scenario  # noqa: PLC0415 - in the worker only

    scenario = Scenario.model_validate(payload, strict=False)
    result = run_scenario(scenario)
    return {
        "final_accuracy": result.final_accuracy,
        "flag_precision": result.flags.precision,
        "flag_recall": result.flags.recall,
        "backdoor_success": result.backdoor_success,
        "accuracies": result.accuracies,
        "fallback_rounds": sum(r.fallback is not None for r in result.rounds),
        "duration_s": result.duration_s,
    }


def _guarded(payload: dict[str, Any]) -> dict[str, Any]:
    """Run one cell; a failure becomes a cell with ``error`` set, not a lost sweep."""
    try:
        return _run_one(payload)
    except Exception as exc:  # one broken cell must not lose the others
        logging.getLogger(__name__).error("cell %s failed: %r", payload["name"], exc)
        return {
            "final_accuracy": None,
            "flag_precision": None,
            "flag_recall": None,
            "backdoor_success": None,
            "accuracies": [],
            "fallback_rounds": 0,
            "duration_s": 0.0,
            "error": f"{type(exc).__name__}: {exc}",
        }


def run_matrix(
    spec: MatrixSpec,
    *,
    workers: int = 2,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every cell and the clean baselines; return the ``matrix.json`` document.

    Parameters
    ----------
    spec:
        The sweep.
    workers:
        Processes (each with one torch thread); 1 runs in this process.
    progress:
        Called with a cell's label as each run finishes.
    """
    jobs: dict[Key, Scenario] = {}
    for defense in spec.defenses:
        jobs[(None, defense, 0.0)] = spec.clean_scenario(defense)
        for fraction in spec.fractions:
            if fraction == 0:
                continue
            for attack in spec.attacks:
                jobs[(attack, defense, fraction)] = spec.cell_scenario(attack, defense, fraction)
    outcomes = _execute(jobs, workers, progress)
    cells: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    for defense in spec.defenses:
        clean = outcomes[(None, defense, 0.0)]
        runs.append({"attack": None, "defense": defense, "byzantine_fraction": 0.0, **clean})
        for fraction in spec.fractions:
            for attack in spec.attacks:
                if fraction == 0:
                    outcome = {**clean, "flag_precision": None, "flag_recall": None}
                else:
                    outcome = outcomes[(attack, defense, fraction)]
                    runs.append(
                        {
                            "attack": attack,
                            "defense": defense,
                            "byzantine_fraction": fraction,
                            **outcome,
                        }
                    )
                cells.append(
                    {
                        "attack": attack,
                        "defense": defense,
                        "byzantine_fraction": fraction,
                        "final_accuracy": outcome["final_accuracy"],
                        "clean_accuracy": clean["final_accuracy"],
                        "flag_precision": outcome["flag_precision"],
                        "flag_recall": outcome["flag_recall"],
                        "backdoor_success": outcome["backdoor_success"],
                    }
                )
    return {
        "cells": cells,
        "options": {
            "attacks": list(spec.attacks),
            "defenses": list(spec.defenses),
            "fractions": list(spec.fractions),
            "defense_params": spec.defense_params,
            "attack_params": spec.attack_params,
            "defenses_know_fraction": spec.defenses_know_fraction,
            "base": spec.base.model_dump(mode="json"),
        },
        "runs": runs,
    }


def _execute(
    jobs: dict[Key, Scenario], workers: int, progress: Callable[[str], None] | None
) -> dict[Key, dict[str, Any]]:
    outcomes: dict[Key, dict[str, Any]] = {}
    payloads = {key: scenario.model_dump(mode="json") for key, scenario in jobs.items()}
    if workers <= 1:
        _init_worker(logging.getLogger().getEffectiveLevel())
        for key, payload in payloads.items():
            outcomes[key] = _guarded(payload)
            if progress is not None:
                progress(payload["name"])
        return outcomes
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=get_context("spawn"),
        initializer=_init_worker,
        initargs=(logging.getLogger().getEffectiveLevel(),),
    ) as pool:
        futures: dict[Future[dict[str, Any]], Key] = {
            pool.submit(_guarded, payload): key for key, payload in payloads.items()
        }
        for future in as_completed(futures):
            key = futures[future]
            outcomes[key] = future.result()
            if progress is not None:
                progress(payloads[key]["name"])
    return outcomes


def worst_case(cells: Sequence[dict[str, Any]]) -> dict[tuple[str, float], dict[str, Any]]:
    """The cell of lowest final accuracy per ``(defense, fraction)``."""
    worst: dict[tuple[str, float], dict[str, Any]] = {}
    for cell in cells:
        key = (cell["defense"], cell["byzantine_fraction"])
        accuracy = cell["final_accuracy"]
        current = worst.get(key)
        if current is None or (accuracy if accuracy is not None else math.inf) < (
            current["final_accuracy"] if current["final_accuracy"] is not None else math.inf
        ):
            worst[key] = cell
    return worst


def write_matrix(document: dict[str, Any], out: Path, title: str = "") -> dict[str, Path]:
    """Write ``matrix.json``, ``heatmap.png`` and ``report.md`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / "matrix.json",
        "png": out / "heatmap.png",
        "md": out / "report.md",
    }
    paths["json"].write_text(json.dumps(document, indent=2) + "\n")
    _heatmap(document, paths["png"], title)
    paths["md"].write_text(_report(document, title))
    return paths


def _fmt(value: float | None, percent: bool = True) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}" if percent else f"{value:.2f}"


def _heatmap(document: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib  # noqa: PLC0415 - sim extra only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    options = document["options"]
    attacks, defenses = options["attacks"], options["defenses"]
    fractions = options["fractions"]
    cells = document["cells"]
    lookup = {(c["attack"], c["defense"], c["byzantine_fraction"]): c for c in cells}
    worst = worst_case(cells)
    panels = len(fractions) + 1
    columns = min(3, panels)
    rows = math.ceil(panels / columns)
    width = max(4.0, 0.75 * len(defenses) + 2.5)
    height = max(2.5, 0.4 * (len(attacks) + 1) + 2.0)
    figure, axes = plt.subplots(
        rows, columns, figsize=(width * columns, height * rows), dpi=110, squeeze=False
    )
    figure.subplots_adjust(hspace=0.55, wspace=0.25)
    flat = axes.ravel()
    for spare in flat[panels:]:
        spare.set_visible(False)
    image = None
    for index, fraction in enumerate(fractions):
        grid = np.full((len(attacks) + 1, len(defenses)), np.nan)
        for row, attack in enumerate(attacks):
            for column, defense in enumerate(defenses):
                value = lookup[(attack, defense, fraction)]["final_accuracy"]
                grid[row, column] = np.nan if value is None else value
        for column, defense in enumerate(defenses):
            value = worst[(defense, fraction)]["final_accuracy"]
            grid[-1, column] = np.nan if value is None else value
        image = _panel(
            flat[index], grid, [*attacks, "worst case"], defenses, f"{fraction:g} Byzantine"
        )
    summary = np.full((len(fractions), len(defenses)), np.nan)
    for row, fraction in enumerate(fractions):
        for column, defense in enumerate(defenses):
            value = worst[(defense, fraction)]["final_accuracy"]
            summary[row, column] = np.nan if value is None else value
    image = _panel(
        flat[panels - 1],
        summary,
        [f"{f:g}" for f in fractions],
        defenses,
        "worst case over attacks (rows: fraction)",
    )
    if image is not None:
        figure.colorbar(image, ax=flat[:panels].tolist(), shrink=0.8, label="test accuracy")
    if title:
        figure.suptitle(title, fontsize=10)
    figure.savefig(path, bbox_inches="tight")
    plt.close(figure)


def _panel(axis: Any, grid: Any, rows: list[str], columns: list[str], title: str) -> Any:
    image = axis.imshow(grid, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
    axis.set_xticks(range(len(columns)), columns, rotation=35, ha="right", fontsize=8)
    axis.set_yticks(range(len(rows)), rows, fontsize=8)
    axis.set_title(title, fontsize=9)
    for r in range(grid.shape[0]):
        for c in range(grid.shape[1]):
            value = grid[r, c]
            text = "-" if math.isnan(value) else f"{100 * value:.0f}"
            axis.text(c, r, text, ha="center", va="center", fontsize=7)
    return image


def _report(document: dict[str, Any], title: str) -> str:
    options = document["options"]
    attacks, defenses = options["attacks"], options["defenses"]
    cells = document["cells"]
    lookup = {(c["attack"], c["defense"], c["byzantine_fraction"]): c for c in cells}
    worst = worst_case(cells)
    base = options["base"]
    lines = [
        f"# {title or 'byzedge sim matrix'}",
        "",
        f"{base['devices']} devices, {base['rounds']} rounds, partition "
        f"`{base['partition']}`, momentum1 {base['momentum1']}, seed {base['seed']}, "
        f"anomaly scoring {'on' if base['anomaly_detection'] else 'off'}, reputation "
        f"weights {'on' if base['device_reputation'] else 'off'}.",
        "",
        "Final test accuracy (%) per attack x defense; in brackets the anomaly scorer's flag "
        "precision / recall against the ground truth (- where nothing was flagged or "
        "scored).",
        "",
        "Clean accuracy (no attack): "
        + ", ".join(
            f"`{d}` {_fmt(lookup[(attacks[0], d, options['fractions'][0])]['clean_accuracy'])}"
            for d in defenses
        )
        if attacks and options["fractions"]
        else "",
        "",
    ]
    for fraction in options["fractions"]:
        lines += [f"## Byzantine fraction {fraction:g}", ""]
        lines.append("| attack | " + " | ".join(defenses) + " |")
        lines.append("|---" * (len(defenses) + 1) + "|")
        for attack in attacks:
            row = []
            for defense in defenses:
                cell = lookup[(attack, defense, fraction)]
                text = _fmt(cell["final_accuracy"])
                if fraction > 0:
                    text += (
                        f" ({_fmt(cell['flag_precision'], False)}/"
                        f"{_fmt(cell['flag_recall'], False)})"
                    )
                if cell["backdoor_success"] is not None:
                    text += f" bd {_fmt(cell['backdoor_success'])}"
                row.append(text)
            lines.append(f"| {attack} | " + " | ".join(row) + " |")
        lines.append(
            "| **worst case** | "
            + " | ".join(
                f"**{_fmt(worst[(d, fraction)]['final_accuracy'])}** "
                f"({worst[(d, fraction)]['attack']})"
                for d in defenses
            )
            + " |"
        )
        lines.append("")
    lines += ["![heat map](heatmap.png)", ""]
    return "\n".join(lines)
