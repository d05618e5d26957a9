"""``byzedge bench aggregators``: time every aggregation rule against ``mean``.

The installed command measures our rules only. The comparison with ByzFL is run from a
checkout of the repository, ``python benchmarks/aggregators.py`` (the same flags plus
``--no-byzfl``), with the ``bench`` extra installed.

Exit codes: 0 the benchmark ran (whether or not every target was met; the table says);
2 usage error.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

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
    return parser


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


def main(argv: Sequence[str]) -> int:
    """Entry point of ``byzedge bench``."""
    args = build_parser().parse_args(argv)
    return run(args, shlex.join(["byzedge", "bench", *argv]))
