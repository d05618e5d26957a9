"""Aggregator speed benchmark: ``python benchmarks/aggregators.py [--n 50 --d 1000000 ...]``.

The same benchmark as ``byzedge bench aggregators`` (the logic lives in byzedge/bench.py),
plus what only this script offers: our time against ByzFL's for every rule both have
(benchmarks/peers.py), when ByzFL is installed (``pip install 'byzedge[bench]'``); without
it the table's ByzFL section says why. ``--no-byzfl`` leaves that section out.
``--out benchmarks/results/aggregators.md`` writes the committed table.
"""

from __future__ import annotations

import argparse
import shlex
import sys

# Run as a script, this folder is on sys.path: the peer adapters are a sibling module.
from peers import byzfl_section

from byzedge.commands.bench import add_aggregator_arguments, run


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_aggregator_arguments(parser)
    parser.add_argument("--no-byzfl", action="store_true", help="skip the ByzFL comparison")
    args = parser.parse_args(argv)
    comparisons = () if args.no_byzfl else (byzfl_section,)
    return run(args, shlex.join(["python", "benchmarks/aggregators.py", *argv]), comparisons)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
