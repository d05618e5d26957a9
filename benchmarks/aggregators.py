"""Aggregator speed benchmark: ``python benchmarks/aggregators.py [--n 50 --d 1000000 ...]``.

The same benchmark as ``byzedge bench aggregators`` (the logic lives in byzedge/bench.py);
``--out benchmarks/results/aggregators.md`` writes the committed table.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from byzedge.commands.bench import add_aggregator_arguments, run


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_aggregator_arguments(parser)
    args = parser.parse_args(argv)
    return run(args, shlex.join(["python", "benchmarks/aggregators.py", *argv]))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
