"""``byzedge sim``: attack-vs-defense fleets simulated in memory (no broker).

``byzedge sim run SCENARIO.toml [--out DIR] [--algorithm NAME]`` runs one scenario and
writes ``result.json``, ``accuracy.png`` and ``report.md``; ``--algorithm`` overrides the
scenario's training method (``fedavg``, ``byz-vr-marina``, ``byz-ef21``, ...).
``byzedge sim matrix --devices N --rounds R --attacks A,B --defenses X,Y --fractions F1,F2
--partition P --seed S --out DIR [--workers 2]`` sweeps attacks x defenses x fractions and
writes ``matrix.json``, ``heatmap.png`` and ``report.md``. An attack is any name a
scenario's ``attack`` takes, a user's colluding ``module:function`` included.

Exit codes: 0 success, 1 runtime failure, 2 bad options or scenario.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in _names(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad fraction list {text!r}") from exc
    if not values or any(not 0 <= v < 1 for v in values):
        raise argparse.ArgumentTypeError("fractions must be in [0, 1)")
    return values


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``sim`` options."""
    parser = argparse.ArgumentParser(
        prog="byzedge sim",
        description="Simulate attack-vs-defense fleets in memory with the real agent, "
        "ingest, anomaly scoring, reputation and aggregation code.",
    )
    parser.add_argument("--verbose", action="store_true", help="log every round")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run one scenario (TOML)")
    run.add_argument("scenario", type=Path, help="scenario file (see fleet_sim/scenario.py)")
    run.add_argument("--out", type=Path, default=Path("sim-out"), help="output folder")
    run.add_argument(
        "--algorithm",
        help="training method, overriding the scenario's: fedavg or a byzedge.methods name "
        "(byz-vr-marina, byz-vr-marina-pp, byz-ef21, byz-ef21-bc, byz-dasha-page, "
        "clip21-sgd2m)",
    )

    matrix = commands.add_parser("matrix", help="sweep attacks x defenses x fractions")
    matrix.add_argument("--base", type=Path, help="scenario TOML the sweep starts from")
    matrix.add_argument("--devices", type=int, help="fleet size")
    matrix.add_argument("--rounds", type=int, help="rounds per run")
    matrix.add_argument(
        "--attacks",
        type=_names,
        required=True,
        help="comma-separated: registered names (byzedge faults list) or module:function",
    )
    matrix.add_argument("--defenses", type=_names, required=True, help="comma-separated")
    matrix.add_argument(
        "--fractions", type=_fractions, default=(0.2,), help="comma-separated, in [0, 1)"
    )
    matrix.add_argument("--partition", help="iid, dirichlet or label-sorted")
    matrix.add_argument("--alpha", type=float, help="dirichlet concentration")
    matrix.add_argument(
        "--byzantine-data",
        choices=("own-shard", "iid"),
        help="iid: the partition goes to honest devices, compromised ones sample IID",
    )
    matrix.add_argument("--seed", type=int, help="seed of everything")
    matrix.add_argument("--momentum1", type=float, help="worker momentum beta")
    matrix.add_argument("--participation-rate", type=float, help="share sampled per round")
    matrix.add_argument("--devices-per-round", type=int, help="devices sampled per round")
    matrix.add_argument("--epochs", type=int, help="local epochs")
    matrix.add_argument("--learning-rate", type=float, help="local SGD step")
    matrix.add_argument("--batch-size", type=int, help="local mini-batch size")
    matrix.add_argument("--eval-every", type=int, help="evaluate every k rounds")
    matrix.add_argument("--model", help="mlp or cnn")
    matrix.add_argument(
        "--attack-params",
        type=_json_object,
        default={},
        help='JSON object {"attack": {param: value}}, e.g. {"sign-flip": {"factor": 1}}',
    )
    matrix.add_argument(
        "--defense-params",
        type=_json_object,
        default={},
        help='JSON object {"defense": {param: value}}; a defense "pre+inner" (e.g. '
        '"bucketing+krum") wraps a registered rule in a pre-aggregator',
    )
    matrix.add_argument(
        "--no-reputation",
        action="store_true",
        help="aggregate unweighted (the bare rule, as in the papers); anomaly flags are "
        "still scored and reported",
    )
    matrix.add_argument(
        "--no-anomaly", action="store_true", help="turn anomaly scoring and reputation off"
    )
    matrix.add_argument(
        "--defenses-know-fraction",
        action="store_true",
        help="give krum/bulyan/multi-krum/pre-aggregators each cell's true Byzantine "
        "fraction as max_byzantine_fraction (default: the scenario's, 0.2)",
    )
    matrix.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    matrix.add_argument("--title", default="", help="title of the heat map and report")
    matrix.add_argument("--out", type=Path, default=Path("sim-matrix"), help="output folder")
    return parser


def _fail(message: str) -> int:
    print(f"byzedge sim: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str]) -> int:
    """Run ``sim run`` or ``sim matrix``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "run":
        return _run(args)
    return _matrix(args)


def _run(args: argparse.Namespace) -> int:
    from byzedge.fleet_sim.scenario import load_scenario  # noqa: PLC0415 - lazy by design

    overrides = {"algorithm": args.algorithm} if args.algorithm is not None else None
    try:
        scenario = load_scenario(args.scenario, overrides)
    except (ValueError, OSError) as exc:
        return _fail(str(exc))
    from tqdm import tqdm  # noqa: PLC0415

    from byzedge.fleet_sim.report import write_run  # noqa: PLC0415
    from byzedge.fleet_sim.simulator import Simulator  # noqa: PLC0415

    try:
        simulator = Simulator(scenario)
    except ValueError as exc:
        return _fail(str(exc))
    with tqdm(total=scenario.rounds, unit="round", dynamic_ncols=True) as bar:

        def progress(record: Any) -> None:
            bar.set_postfix(accuracy=record.accuracy)
            bar.update(1)

        result = simulator.run(progress)
    paths = write_run(result, args.out)
    print(
        f"final accuracy {result.final_accuracy}, flag precision {result.flags.precision}, "
        f"recall {result.flags.recall}, backdoor success {result.backdoor_success}"
    )
    print(f"wrote {paths['json']}, {paths['png']}, {paths['md']}")
    return 0


def _matrix(args: argparse.Namespace) -> int:
    from byzedge.fleet_sim.scenario import Scenario, load_scenario  # noqa: PLC0415

    overrides = {
        "devices": args.devices,
        "rounds": args.rounds,
        "partition": args.partition,
        "alpha": args.alpha,
        "byzantine_data": args.byzantine_data,
        "seed": args.seed,
        "momentum1": args.momentum1,
        "participation_rate": args.participation_rate,
        "devices_per_round": args.devices_per_round,
        "epochs": args.epochs,
        "learning_rate": args.learning_rate,
        "batch_size": args.batch_size,
        "eval_every": args.eval_every,
        "model": args.model,
    }
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if args.no_reputation:
        overrides.update(device_reputation=False)
    if args.no_anomaly:
        overrides.update(anomaly_detection=False, device_reputation=False)
    try:
        base = (
            load_scenario(args.base, overrides)
            if args.base
            else Scenario.model_validate(overrides, strict=False)
        )
    except (ValueError, OSError) as exc:
        return _fail(str(exc))
    from byzedge.coordinator.aggregation import AGGREGATORS  # noqa: PLC0415
    from byzedge.faults import is_fault_name, known_fault_names  # noqa: PLC0415
    from byzedge.fleet_sim.simulator import split_defense  # noqa: PLC0415

    problems = [
        f"unknown defense {d!r}"
        for d in args.defenses
        if any(part not in AGGREGATORS for part in split_defense(d) if part is not None)
    ]
    # The names `sim run` accepts in a scenario (fleet_sim.scenario checks them the same
    # way), and "none": with --fractions 0, the clean runs only.
    problems += [
        f"unknown attack {a!r}" for a in args.attacks if a != "none" and not is_fault_name(a)
    ]
    if problems:
        known_attacks = ", ".join([*known_fault_names(colluding=True), "none"])
        return _fail(
            "; ".join(problems) + f" (defenses: {', '.join(sorted(AGGREGATORS))}; "
            f"attacks: {known_attacks})"
        )
    from tqdm import tqdm  # noqa: PLC0415

    from byzedge.fleet_sim.matrix import MatrixSpec, run_matrix, write_matrix  # noqa: PLC0415

    spec = MatrixSpec(
        base=base,
        attacks=args.attacks,
        defenses=args.defenses,
        fractions=args.fractions,
        defense_params=args.defense_params,
        attack_params=args.attack_params,
        defenses_know_fraction=args.defenses_know_fraction,
    )
    total = len(args.defenses) * (1 + len(args.attacks) * sum(f > 0 for f in args.fractions))
    with tqdm(total=total, unit="run", dynamic_ncols=True) as bar:

        def progress(label: str) -> None:
            bar.set_description(label[:40])
            bar.update(1)

        document = run_matrix(spec, workers=args.workers, progress=progress)
    paths = write_matrix(document, args.out, args.title)
    print(f"wrote {paths['json']}, {paths['png']}, {paths['md']}")
    return 0
