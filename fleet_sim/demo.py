"""``byzedge demo``: the same fleet, the same attack, one run per defense, side by side.

For each defense the demo builds a fresh fleet (new keys, new fleet name) on one broker,
runs it to completion, and records what the coordinator published each round. It writes
``results.json``, ``accuracy.png`` (validation accuracy per round, a line per defense) and
``report.md`` to the output folder, and prints a table of final accuracies.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from byzedge.coordinator.service import RoundSummary
from byzedge.fleet_sim.brokers import start_broker
from byzedge.fleet_sim.fleet import FleetSpec, InProcessFleet, choose_byzantine

__all__ = ["DemoOptions", "RunResult", "run_demo", "write_outputs"]

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """The demo's flags."""

    devices: int = 20
    rounds: int = 20
    byzantine_fraction: float = 0.2
    attack: str = "sign-flip"
    defenses: tuple[str, ...] = ("mean", "clipping-vr")
    algorithm: str = "fedavg"
    step_size: float = 0.5
    compression: str = "dense"
    sparsity: float = 0.1
    broker: str = "auto"
    seed: int = 0
    model: str = "mlp"
    dataset: str = "digits"
    partition: str = "iid"
    epochs: int = 3
    learning_rate: float = 0.1
    out: Path = Path("demo-out")


@dataclass(slots=True)
class RunResult:
    """One defense's run, as written to ``results.json``."""

    defense: str
    attack: str | None
    byzantine_fraction: float
    algorithm: str
    byzantine_devices: list[str]
    compression: str
    sparsity: float | None
    devices: int
    seed: int
    broker: str
    final_accuracy: float | None = None
    uplink_bytes: int = 0
    dense_uplink_bytes: int = 0
    refused_models: int = 0
    duration_s: float = 0.0
    rounds: list[dict[str, Any]] = field(default_factory=list)


def run_demo(
    options: DemoOptions,
    *,
    on_round: Callable[[str, RoundSummary], None] | None = None,
    workdir: Path | None = None,
) -> list[RunResult]:
    """Run one fleet per defense and return their results."""
    byzantine = (
        choose_byzantine(options.devices, options.byzantine_fraction, options.seed)
        if options.attack and options.attack != "none"
        else frozenset()
    )
    attack = options.attack if byzantine else None
    method = options.algorithm != "fedavg"
    results: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="byzedge-demo-") as scratch:
        base = workdir or Path(scratch)
        with start_broker(options.broker, workdir=base / "broker") as broker:
            _LOGGER.info("demo: broker %s (%s)", broker.url, broker.kind)
            for index, defense in enumerate(options.defenses):
                result = RunResult(
                    defense=defense,
                    attack=attack,
                    byzantine_fraction=options.byzantine_fraction if attack else 0.0,
                    algorithm=options.algorithm,
                    byzantine_devices=sorted(byzantine),
                    compression=options.compression,
                    sparsity=options.sparsity if options.compression != "dense" else None,
                    devices=options.devices,
                    seed=options.seed,
                    broker=broker.kind,
                )

                def record(summary: RoundSummary, result: RunResult = result) -> None:
                    result.rounds.append(
                        {
                            "round": summary.round,
                            "accuracy": summary.validation_accuracy,
                            "accepted": summary.accepted,
                            "rejected": sum(summary.rejected.values()),
                            "flagged": summary.flagged,
                        }
                    )
                    result.uplink_bytes += summary.uplink_bytes
                    result.dense_uplink_bytes += summary.dense_uplink_bytes
                    if on_round is not None:
                        on_round(result.defense, summary)

                spec = FleetSpec(
                    fleet=f"demo-{index}-{defense}",
                    broker_url=broker.url,
                    mqtt_protocol=broker.protocol,
                    devices=options.devices,
                    rounds=options.rounds,
                    defense=defense,
                    attack=attack,
                    byzantine=byzantine,
                    # A training method's messages use the coordinator's compression (it
                    # travels in the signed plan), FedAvg's updates the agents' own.
                    compression=options.compression if not method else "dense",
                    sparsity=options.sparsity,
                    seed=options.seed,
                    model=options.model,
                    dataset=options.dataset,
                    partition=options.partition,
                    epochs=options.epochs,
                    learning_rate=options.learning_rate,
                    coordinator_overrides={
                        **_method_overrides(options),
                        "validation": options.dataset,
                    },
                )
                started = time.monotonic()
                fleet = InProcessFleet(spec, base / spec.fleet, on_round=record)
                fleet.run()
                result.duration_s = round(time.monotonic() - started, 2)
                result.refused_models = fleet.refused_models
                if result.rounds:
                    result.final_accuracy = result.rounds[-1]["accuracy"]
                results.append(result)
    return results


def _method_overrides(options: DemoOptions) -> dict[str, Any]:
    """The coordinator keys of a training method other than FedAvg (none for FedAvg)."""
    if options.algorithm == "fedavg":
        return {}
    return {
        "algorithm": options.algorithm,
        "method": {
            "step_size": options.step_size,
            "compression": options.compression,
            "sparsity": options.sparsity,
        },
    }


def write_outputs(options: DemoOptions, results: Sequence[RunResult]) -> dict[str, Path]:
    """Write ``results.json``, ``accuracy.png`` and ``report.md``; return their paths."""
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / "results.json",
        "png": out / "accuracy.png",
        "md": out / "report.md",
    }
    document = {
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
        "runs": [asdict(result) for result in results],
    }
    paths["json"].write_text(json.dumps(document, indent=2) + "\n")
    _plot(results, options, paths["png"])
    paths["md"].write_text(_report(options, results))
    return paths


def _title(options: DemoOptions) -> str:
    attack = options.attack if options.byzantine_fraction > 0 else "no attack"
    return (
        f"{options.algorithm}, {options.devices} devices, "
        f"{options.byzantine_fraction:.0%} compromised ({attack}), {options.compression} uplink"
    )


def _plot(results: Sequence[RunResult], options: DemoOptions, path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - sim extra only; imported when plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=120)
    for result in results:
        rounds = [r["round"] for r in result.rounds]
        accuracy = [r["accuracy"] for r in result.rounds]
        axes.plot(rounds, accuracy, marker="o", markersize=3, label=result.defense)
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("round")
    axes.set_ylabel("validation accuracy")
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.set_title(_title(options), fontsize=10)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def format_table(results: Sequence[RunResult]) -> str:
    """A Markdown table of the runs' final figures."""
    lines = [
        "| defense | final accuracy | uplink bytes | dense float32 / uplink | models refused |",
        "|---|---|---|---|---|",
    ]
    for result in results:
        ratio = result.dense_uplink_bytes / result.uplink_bytes if result.uplink_bytes else 0.0
        accuracy = f"{result.final_accuracy:.4f}" if result.final_accuracy is not None else "n/a"
        lines.append(
            f"| {result.defense} | {accuracy} | {result.uplink_bytes:,} | "
            f"{ratio:.1f}x | {result.refused_models} |"
        )
    return "\n".join(lines)


def _report(options: DemoOptions, results: Sequence[RunResult]) -> str:
    byzantine = results[0].byzantine_devices if results else []
    return (
        f"# byzedge demo\n\n{_title(options)}; {options.rounds} rounds, seed {options.seed}, "
        f"model `{options.model}`, partition `{options.partition}`.\n\n"
        f"Compromised devices: {', '.join(byzantine) or 'none'}.\n\n"
        f"{format_table(results)}\n\n![accuracy per round](accuracy.png)\n\n"
        "`mean` is plain FedAvg: anomaly scores are computed and reported, but nothing is "
        "down-weighted or clipped. Other defenses also weight each update by its device's "
        "decaying reputation.\n"
    )
