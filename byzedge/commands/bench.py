"""``byzedge bench aggregators`` and ``byzedge bench fleet``.

``aggregators`` times every aggregation rule against ``mean``. ``fleet`` drives one real
coordinator with a load generator of simulated devices over a private mosquitto and
reports how far it goes (:mod:`byzedge.bench_fleet`).

The installed command measures our rules only. The comparison with ByzFL is run from a
checkout of the repository, ``python benchmarks/aggregators.py`` (the same flags plus
``--no-byzfl``), with the ``bench`` extra installed.

Exit codes: 0 the benchmark ran (whether or not every target was met; the table says);
2 usage error.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from byzedge.commands._common import fail

if TYPE_CHECKING:
    from byzedge.bench import Comparison

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The bench subcommands."""
    parser = argparse.ArgumentParser(prog="byzedge bench", description="Speed benchmarks.")
    sub = parser.add_subparsers(dest="suite", required=True)
    aggregators = sub.add_parser(
        "aggregators",
        help="every aggregation rule's median time as a multiple of mean's",
        description=(
            "Time every registered aggregation rule on one float32 (n, d) round with f "
            "Byzantine rows, as medians and ratios to `mean` measured in the same run; "
            "also streaming vs batch peak memory. The comparison with ByzFL is not part "
            "of this command: run `python benchmarks/aggregators.py` from the repository "
            "(same flags) with the bench extra installed."
        ),
    )
    add_aggregator_arguments(aggregators)
    # Accepted, and ignored, for scripts written when this command also timed ByzFL.
    aggregators.add_argument("--no-byzfl", action="store_true", help=argparse.SUPPRESS)
    fleet = sub.add_parser(
        "fleet",
        help="how far one coordinator goes: updates per second, round time, memory",
        description=(
            "Drive a real coordinator (its own process) with simulated devices that sign "
            "and publish real updates over a private mosquitto, for every combination of "
            "devices per round, model and compression; compare its ingest throughput with "
            "a plain subscriber's on the same broker in the same run. Needs mosquitto."
        ),
    )
    add_fleet_arguments(fleet)
    return parser


def _csv(kind: type[int] | type[str]) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        try:
            values = [kind(part.strip()) for part in text.split(",") if part.strip()]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc
        if not values:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        return values

    return parse


def add_fleet_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the fleet benchmark's flags (shared with benchmarks/scale.py)."""
    parser.add_argument(
        "--devices",
        type=_csv(int),
        default=[100, 1000, 10000],
        help="devices per round, comma-separated (default 100,1000,10000)",
    )
    parser.add_argument(
        "--model",
        type=_csv(str),
        default=["mlp", "mlp-wide"],
        help="registered models, comma-separated (default mlp,mlp-wide)",
    )
    parser.add_argument(
        "--compression",
        type=_csv(str),
        default=["dense", "top-k-q8"],
        help="codecs, comma-separated; sparse ones keep 1%% (default dense,top-k-q8)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds per configuration")
    parser.add_argument(
        "--workers",
        type=_csv(int),
        default=[0],
        help="ingest workers, comma-separated: 0 is one coordinator process, K > 0 a leader "
        "and K ingest-worker processes ([cluster] workers; default 0)",
    )
    parser.add_argument(
        "--connections", type=int, default=4, help="MQTT connections of the load generator"
    )
    parser.add_argument(
        "--max-round-gb",
        type=float,
        default=4.0,
        help="skip configurations whose decoded rows (2 x n x d x 4 bytes) exceed this",
    )
    parser.add_argument(
        "--out", type=Path, help="folder for scale.md, scale.json and scale.png (optional)"
    )
    parser.add_argument(
        "--before", type=Path, help="an earlier scale.json to compare with (before/after)"
    )


def add_aggregator_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the aggregator benchmark's flags (shared with benchmarks/aggregators.py)."""
    parser.add_argument("--n", type=int, default=50, help="updates per round (default 50)")
    parser.add_argument(
        "--d", type=int, default=1_000_000, help="dimension of each update (default 1e6)"
    )
    parser.add_argument("--f", type=int, default=10, help="Byzantine updates (default 10)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per rule")
    parser.add_argument("--seed", type=int, default=0, help="seed of the benchmark data")
    parser.add_argument(
        "--rules", nargs="+", metavar="NAME", help="only these registry names (and mean)"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip streaming vs batch")
    parser.add_argument("--out", type=Path, help="also write the Markdown table to this file")


def run(args: argparse.Namespace, command: str, comparisons: Sequence[Comparison] = ()) -> int:
    """Run the aggregator benchmark for parsed ``args``; print (and write) the table.

    ``comparisons`` add their sections to the table (``benchmarks/aggregators.py`` passes
    the ByzFL one).
    """
    from byzedge.bench import render_markdown, run_aggregators  # noqa: PLC0415

    if not (args.n >= 1 and args.d >= 1 and 0 <= args.f < args.n and args.repeats >= 1):
        return fail("bench", "need --n >= 1, --d >= 1, 0 <= --f < --n and --repeats >= 1")
    if args.rules:
        from byzedge.coordinator.aggregation import AGGREGATORS  # noqa: PLC0415

        unknown = sorted(set(args.rules) - set(AGGREGATORS))
        if unknown:
            return fail("bench", f"unknown rule(s) {', '.join(unknown)}")
    report = run_aggregators(
        n=args.n,
        d=args.d,
        f=args.f,
        repeats=args.repeats,
        seed=args.seed,
        names=args.rules,
        memory=not args.no_memory,
        comparisons=comparisons,
        command=command,
    )
    table = render_markdown(report)
    print(table, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table, encoding="utf-8")
    return 0


def run_fleet(args: argparse.Namespace, command: str) -> int:
    """Run the fleet benchmark for parsed ``args``; print (and write) the report."""
    from tqdm import tqdm  # noqa: PLC0415

    from byzedge.bench_fleet import (  # noqa: PLC0415
        load_report,
        render_markdown,
        run_fleet_bench,
        write_outputs,
    )
    from byzedge.fleet_sim.brokers import find_mosquitto  # noqa: PLC0415
    from byzedge.models import MODELS  # noqa: PLC0415
    from byzedge.protocol.codecs import CODECS  # noqa: PLC0415

    unknown = sorted(set(args.model) - set(MODELS)) + sorted(set(args.compression) - set(CODECS))
    if unknown:
        return fail("bench", f"unknown model or codec {', '.join(unknown)}")
    if any(c.startswith("rand-k") for c in args.compression):
        return fail("bench", "rand-k codecs derive their support per device: use top-k-q8")
    if min(args.devices) < 1 or args.rounds < 1 or args.connections < 1:
        return fail("bench", "need --devices >= 1, --rounds >= 1 and --connections >= 1")
    if min(args.workers) < 0:
        return fail("bench", "need --workers >= 0")
    if find_mosquitto() is None:
        return fail("bench", "mosquitto is not installed (apt-get install -y mosquitto)")
    before = load_report(args.before) if args.before is not None else None
    total = len(args.devices) * len(args.model) * len(args.compression) * len(args.workers)
    with tqdm(total=total, unit="config", dynamic_ncols=True) as bar:
        seen: set[str] = set()

        def progress(label: str, stage: str) -> None:
            if label not in seen:
                if seen:
                    bar.update(1)
                seen.add(label)
            bar.set_postfix_str(f"{label}: {stage}")

        report = run_fleet_bench(
            devices=args.devices,
            models=args.model,
            compressions=args.compression,
            rounds=args.rounds,
            connections=args.connections,
            max_round_bytes=int(args.max_round_gb * 1e9),
            command=command,
            progress=progress,
            workers=args.workers,
        )
        bar.update(total - bar.n)
    if args.out is not None:
        print(write_outputs(report, args.out, before), end="")
    else:
        print(render_markdown(report, before), end="")
    return 0


def main(argv: Sequence[str]) -> int:
    """Entry point of ``byzedge bench``."""
    args = build_parser().parse_args(argv)
    command = shlex.join(["byzedge", "bench", *argv])
    if args.suite == "fleet":
        return run_fleet(args, command)
    return run(args, command)
