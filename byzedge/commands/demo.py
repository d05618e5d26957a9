"""``byzedge demo``: attack-vs-defense fleets over a real MQTT broker, with plots."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The demo's options."""
    parser = argparse.ArgumentParser(
        prog="byzedge demo",
        description="Train the same fleet once per defense, under the same attack and seed, "
        "and compare. Writes results.json, accuracy.png and report.md to --out.",
    )
    parser.add_argument("--devices", type=int, default=20, help="fleet size (default 20)")
    parser.add_argument("--rounds", type=int, default=20, help="rounds per run (default 20)")
    parser.add_argument(
        "--byzantine-fraction",
        type=float,
        default=0.2,
        help="share of compromised devices (default 0.2)",
    )
    parser.add_argument(
        "--attack",
        default="sign-flip",
        help="attack of compromised devices: sign-flip, gaussian-noise, label-flip, or none",
    )
    parser.add_argument(
        "--defense",
        default="mean,clipping-vr",
        help="comma-separated aggregation rules, one run each (default mean,clipping-vr)",
    )
    parser.add_argument(
        "--algorithm",
        default="fedavg",
        help="training method: fedavg (default), byz-vr-marina, byz-vr-marina-pp, byz-ef21, "
        "byz-ef21-bc, byz-dasha-page or clip21-sgd2m",
    )
    parser.add_argument(
        "--step-size", type=float, default=0.5, help="a method's step gamma (default 0.5)"
    )
    parser.add_argument(
        "--compression",
        default="dense",
        help="uplink codec: dense, float16, top-k, top-k-q8, rand-k, rand-k-q8, natural, qsgd",
    )
    parser.add_argument(
        "--sparsity", type=float, default=0.1, help="sparsifying codecs: share kept"
    )
    parser.add_argument(
        "--broker",
        default="auto",
        help="auto (mosquitto on PATH, else embedded), embedded, mosquitto, or mqtt://host:port",
    )
    parser.add_argument(
        "--dataset",
        default="digits",
        choices=("digits", "basic-motions"),
        help="digits (default), or basic-motions: smart-watch accelerometer + gyroscope "
        "windows (sktime's wheel), trained with --model sensor-cnn unless one is given",
    )
    parser.add_argument("--model", default=None, help="mlp (default) or cnn; sensor-cnn")
    parser.add_argument("--partition", default="iid", help="iid or dirichlet")
    parser.add_argument("--epochs", type=int, default=3, help="local epochs per round")
    parser.add_argument("--learning-rate", type=float, default=0.1, help="local SGD step")
    parser.add_argument("--seed", type=int, default=0, help="seed of everything (default 0)")
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder")
    parser.add_argument("--verbose", action="store_true", help="log every round and message")
    return parser


def _method_problems(algorithm: str, compression: str, step_size: float) -> list[str]:
    """What is wrong with a training method's flags, as the coordinator's config would say."""
    from byzedge.coordinator.training_method import (  # noqa: PLC0415 - lazy by design
        MethodConfig,
        build_training_method,
    )

    try:
        table = MethodConfig(compression=compression, step_size=step_size)
        build_training_method(algorithm, table, seed=0)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        return [f"--algorithm {algorithm}: {exc}"]
    return []


def main(argv: Sequence[str]) -> int:
    """Run the demo; 0 on success, 2 on bad options."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from byzedge.coordinator.aggregation import AGGREGATORS  # noqa: PLC0415 - lazy by design
    from byzedge.faults import ATTACKS  # noqa: PLC0415
    from byzedge.fleet_sim.demo import DemoOptions, format_table, run_demo, write_outputs  # noqa: PLC0415
    from byzedge.models.datasets import DEFAULT_MODELS  # noqa: PLC0415
    from byzedge.protocol.codecs import CODECS  # noqa: PLC0415

    defenses = tuple(name.strip() for name in args.defense.split(",") if name.strip())
    problems = [f"unknown defense {d!r}" for d in defenses if d not in AGGREGATORS]
    if args.attack != "none" and args.attack not in ATTACKS:
        problems.append(f"unknown attack {args.attack!r}; known: {', '.join(sorted(ATTACKS))}")
    if args.compression not in CODECS:
        problems.append(f"unknown compression {args.compression!r}")
    if args.algorithm != "fedavg":
        problems.extend(_method_problems(args.algorithm, args.compression, args.step_size))
    if not 0 <= args.byzantine_fraction < 1:
        problems.append("--byzantine-fraction must be in [0, 1)")
    if args.devices < 1 or args.rounds < 1:
        problems.append("--devices and --rounds must be positive")
    if problems or not defenses:
        known = ", ".join(sorted(AGGREGATORS))
        print(
            f"byzedge demo: {'; '.join(problems) or 'no defense given'} (defenses: {known})",
            file=sys.stderr,
        )
        return 2
    options = DemoOptions(
        devices=args.devices,
        rounds=args.rounds,
        byzantine_fraction=args.byzantine_fraction if args.attack != "none" else 0.0,
        attack=args.attack,
        defenses=defenses,
        algorithm=args.algorithm,
        step_size=args.step_size,
        compression=args.compression,
        sparsity=args.sparsity,
        broker=args.broker,
        seed=args.seed,
        model=args.model or DEFAULT_MODELS[args.dataset],
        dataset=args.dataset,
        partition=args.partition,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        out=args.out,
    )
    from tqdm import tqdm  # noqa: PLC0415

    with tqdm(total=len(defenses) * args.rounds, unit="round", dynamic_ncols=True) as bar:

        def progress(defense: str, summary: object) -> None:
            accuracy = getattr(summary, "validation_accuracy", None)
            bar.set_description(f"{defense:>16}")
            bar.set_postfix(accuracy=accuracy)
            bar.update(1)

        results = run_demo(options, on_round=progress)
    paths = write_outputs(options, results)
    print()
    print(format_table(results))
    print(f"\nwrote {paths['json']}, {paths['png']}, {paths['md']}")
    return 0
