"""Outputs of ``byzedge sim run``: ``result.json``, ``accuracy.png`` and ``report.md``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from byzedge.fleet_sim.simulator import SimulationResult

__all__ = ["plot_accuracy", "write_run"]


def plot_accuracy(
    curves: Sequence[tuple[str, Sequence[float | None]]], path: Path, title: str = ""
) -> None:
    """Plot test accuracy per round, one line per ``(label, accuracies)``."""
    import matplotlib  # noqa: PLC0415 - sim extra only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=120)
    palette = plt.get_cmap("tab20" if len(curves) > 10 else "tab10")
    colours = [palette(i) for i in range(palette.N)]
    for index, (label, accuracies) in enumerate(curves):
        points = [(i + 1, a) for i, a in enumerate(accuracies) if a is not None]
        axes.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            marker="o",
            ms=2,
            color=colours[index % len(colours)],
            linestyle="--" if label.endswith("/ clean") else "-",
            label=label,
        )
    axes.set_xlabel("round")
    axes.set_ylabel("test accuracy")
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    if title:
        axes.set_title(title, fontsize=9)
    axes.legend(fontsize=7, ncol=2 if len(curves) > 8 else 1)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_run(result: SimulationResult, out: Path) -> dict[str, Path]:
    """Write one run's outputs under ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "result.json", "png": out / "accuracy.png", "md": out / "report.md"}
    paths["json"].write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    scenario = result.scenario
    label = f"{scenario['defense']} / {scenario['attack'] or 'no attack'}"
    plot_accuracy([(label, result.accuracies)], paths["png"], scenario["name"])

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    lines = [
        f"# byzedge sim run: {scenario['name']}",
        "",
        f"{scenario['devices']} devices, {scenario['rounds']} rounds, partition "
        f"`{scenario['partition']}`, defense `{scenario['defense']}`, attack "
        f"`{scenario['attack']}` on {len(result.compromised)} devices, seed {scenario['seed']}.",
        "",
        "| final accuracy | flag precision | flag recall | backdoor success | seconds |",
        "|---|---|---|---|---|",
        f"| {fmt(result.final_accuracy)} | {fmt(result.flags.precision)} | "
        f"{fmt(result.flags.recall)} | {fmt(result.backdoor_success)} | {result.duration_s} |",
        "",
        "![accuracy per round](accuracy.png)",
        "",
    ]
    paths["md"].write_text("\n".join(lines))
    return paths
