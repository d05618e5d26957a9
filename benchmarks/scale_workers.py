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

``--nats`` runs the same on a private three-node NATS cluster on loopback (clustered
JetStream, an MQTT listener per node): devices publish MQTT 3.1.1 to node 0, the workers
consume the fleet's JetStream stream (``[cluster] broker = "nats"``), and the tables go
to ``scale_workers_nats.md`` / ``.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from byzedge.bench_fleet import render_workers_markdown, run_fleet_bench
from byzedge.commands.bench import add_fleet_arguments
from byzedge.fleet_sim.brokers import BrokerHandle
from byzedge.fleet_sim.nats_cluster import start_nats_cluster


@contextlib.contextmanager
def _broker(nats: bool) -> Iterator[tuple[BrokerHandle | None, Sequence[str]]]:
    """No broker (the benchmark starts a private mosquitto), or a private NATS cluster."""
    if not nats:
        yield None, ()
        return
    with (
        tempfile.TemporaryDirectory(prefix="byzedge-bench-nats-") as tmp,
        start_nats_cluster(Path(tmp)) as cluster,
    ):
        first = cluster.nodes[0]
        yield BrokerHandle("127.0.0.1", first.mqtt_port, "external"), cluster.nats_urls


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
    parser.add_argument(
        "--nats", action="store_true", help="run on a private three-node NATS cluster"
    )
    args = parser.parse_args(argv)
    command = shlex.join(["python", "benchmarks/scale_workers.py", *argv])
    with _broker(args.nats) as (broker, nats_servers):
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
            broker=broker,
            nats_servers=nats_servers,
        )
    markdown = render_workers_markdown(report, nats=args.nats)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "scale_workers_nats" if args.nats else "scale_workers"
    (args.out / f"{name}.md").write_text(markdown, encoding="utf-8")
    (args.out / f"{name}.json").write_text(report.to_json() + "\n", encoding="utf-8")
    print(markdown, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
