"""Issue 12, item 1: measured limits of one machine (``byzedge bench fleet``).

Usage::

    python benchmarks/scale.py [--devices 100,1000,10000] [--model mlp,mlp-wide]
                               [--compression dense,top-k-q8] [--rounds 2]
                               [--before benchmarks/results/scale-before.json]
                               [--out benchmarks/results/]

Runs the fleet benchmark (:mod:`byzedge.bench_fleet`: a load generator of simulated devices
that sign and publish real updates, a real coordinator in its own process, a private
mosquitto, and the raw broker throughput measured in the same run) and writes
``scale.md``, ``scale.json`` and ``scale.png`` into ``--out``, with the machine it ran on.
``--before`` adds a before/after section from an earlier run's JSON (the run made before
the bottleneck fix is kept as ``scale-before.json``).
"""

from __future__ import annotations

import argparse
import shlex
import sys

from byzedge.commands.bench import add_fleet_arguments, run_fleet


def main(argv: list[str]) -> int:
    """Parse ``argv`` and run the benchmark (results in benchmarks/results/ by default)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_fleet_arguments(parser)
    parser.set_defaults(out=None)
    args = parser.parse_args(argv)
    if args.out is None:
        from pathlib import Path  # noqa: PLC0415

        args.out = Path(__file__).resolve().parent / "results"
    return run_fleet(args, shlex.join(["python", "benchmarks/scale.py", *argv]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
