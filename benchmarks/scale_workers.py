"""Issue 12, item 2: sharded ingest's throughput with 0 (one process), 1, 2 and 4 workers.

Usage::

    python benchmarks/scale_workers.py [--devices 1000,4000] [--model mlp]
                                       [--compression dense,top-k-q8] [--workers 0,1,2,4]
                                       [--rounds 4] [--out benchmarks/results/]

The fleet benchmark (:mod:`byzedge.bench_fleet`: the load generator's simulated devices,
a private mosquitto, the coordinator in a process of its own) run once per worker count:
``0`` is today's single coordinator process, ``K`` the leader with K
``coordinator ingest-worker`` processes. Writes ``scale_workers.md`` and
``scale_workers.json`` into ``--out`` with the machine and the command.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from byzedge.bench_fleet import render_workers_markdown, run_fleet_bench
from byzedge.commands.bench import add_fleet_arguments


def main(argv: list[str]) -> int:
    """Parse ``argv``, run the benchmark, write its table (benchmarks/results/ by default)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_fleet_arguments(parser)
    parser.set_defaults(
        devices=[1000, 4000],
        model=["mlp"],
        compression=["dense", "top-k-q8"],
        workers=[0, 1, 2, 4],
        rounds=4,
        out=Path(__file__).resolve().parent / "results",
    )
    args = parser.parse_args(argv)
    command = shlex.join(["python", "benchmarks/scale_workers.py", *argv])
    report = run_fleet_bench(
        devices=args.devices,
        models=args.model,
        compressions=args.compression,
        rounds=args.rounds,
        connections=args.connections,
        max_round_bytes=int(args.max_round_gb * 1e9),
        command=command,
        workers=args.workers,
        progress=lambda label, stage: print(f"{label}: {stage}", file=sys.stderr, flush=True),
    )
    markdown = render_workers_markdown(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale_workers.md").write_text(markdown, encoding="utf-8")
    (args.out / "scale_workers.json").write_text(report.to_json() + "\n", encoding="utf-8")
    print(markdown, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
