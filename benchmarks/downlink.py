"""Issue 10: Byz-EF21-BC's compressed broadcast over the wire, against the dense model.

Usage::

    python benchmarks/downlink.py [--rounds 20] [--devices 8] [--model mlp-wide]
                                  [--out benchmarks/results/downlink.md]

Runs the real agent and coordinator daemons (torch training, signed envelopes, ingest, the
round engine) over the in-memory broker, as tests/unit/test_method_services.py does, for
``byz-ef21`` (the dense model every round) and ``byz-ef21-bc`` at several broadcast
sparsities. It reports, from the messages the coordinator actually published and the bytes
each agent actually used, the mean size of one round's downlink message (dense model or
sparse broadcast), each device's downlink over the run (dense models of the first rounds,
the one ``(x, g)`` pair it fetched, then broadcasts) and its ratio to the dense run measured
in the same run, and the final validation accuracy.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from byzedge.bench import machine_description
from byzedge.coordinator.service import RoundSummary
from byzedge.daemon.mqtt import MqttSettings
from byzedge.daemon.transport import InMemoryBroker
from byzedge.fleet_sim.fleet import FleetSpec, InProcessFleet
from byzedge.protocol import topics

OUT = Path("benchmarks/results/downlink.md")
FLEET = "downlink"
SPARSITIES = (0.01, 0.05, 0.1)


@dataclass(frozen=True)
class Row:
    """One run."""

    algorithm: str
    downlink_sparsity: float | None
    dense_model_bytes: int
    round_message_bytes: float
    device_downlink_bytes: float
    resyncs_per_device: float
    accuracy: float
    seconds: float


def run(algorithm: str, sparsity: float | None, args: argparse.Namespace) -> Row:
    """Run one fleet and measure its downlink."""
    method: dict[str, object] = {"step_size": 0.5, "compression": "top-k", "sparsity": 0.1}
    if sparsity is not None:
        method["downlink_sparsity"] = sparsity
    summaries: list[RoundSummary] = []
    spec = FleetSpec(
        fleet=FLEET,
        broker_url="mqtt://in-memory:1",
        devices=args.devices,
        rounds=args.rounds,
        model=args.model,
        round_timeout_s=60.0,
        seed=args.seed,
        coordinator_overrides={
            "algorithm": algorithm,
            "method": method,
            # mlp-wide's (x, g) pair is 0.9 MB: it must fit one retained message.
            "mqtt": MqttSettings(url="mqtt://in-memory:1", max_message_bytes=4 << 20),
        },
    )
    broker = InMemoryBroker()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        fleet = InProcessFleet(
            spec, Path(workdir), on_round=summaries.append, transport=broker.connect
        )
        if fleet.run() != 0:
            raise SystemExit(f"{algorithm} run failed")
    seconds = time.perf_counter() - started
    dense = [len(p) for t, p in broker.published if t == topics.model_topic(FLEET)]
    broadcasts = [len(p) for t, p in broker.published if t == topics.broadcast_topic(FLEET)]
    per_round = broadcasts if sparsity is not None else dense
    followers = [agent.downlink for agent in fleet.agents]
    return Row(
        algorithm=algorithm,
        downlink_sparsity=sparsity,
        dense_model_bytes=int(np.median(dense)),
        # The broadcasts of the rounds devices followed (the first two are dense/resync).
        round_message_bytes=float(np.mean(per_round[2:] if sparsity is not None else per_round)),
        device_downlink_bytes=float(np.mean([f.downlink_bytes for f in followers])),
        resyncs_per_device=float(np.mean([f.resyncs for f in followers])),
        accuracy=float(summaries[-1].validation_accuracy or 0.0),
        seconds=round(seconds, 1),
    )


def render(rows: list[Row], args: argparse.Namespace, command: str) -> str:
    """The Markdown report."""
    base = next(r for r in rows if r.downlink_sparsity is None)
    machine = machine_description()
    lines = [
        "# Byz-EF21-BC's compressed broadcast against the dense model (issue 10)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine['platform']}, {machine['cpu count']} cores, "
        f"Python {machine['python']}, numpy {machine['numpy']}",
        "",
        f"{args.devices} devices, {args.rounds} rounds, model `{args.model}`, uplink top-k 10% "
        "with error feedback, step 0.5, real agent and coordinator daemons over the "
        "in-memory broker. *Round message*: the mean size of one round's model message "
        "a device receives (the signed dense model; for BC the signed sparse broadcast of "
        "the rounds devices followed). *Device downlink*: every model message one agent "
        "used over the run (for BC: the dense models of rounds 1-2, the (x, g) pair it "
        "fetched once, then broadcasts; the final model is dense for both). Ratios are "
        "against `byz-ef21` in the same run.",
        "",
        "| method | broadcast keeps | round message B | ratio | device downlink KiB | ratio "
        "| pair fetches / device | final accuracy | s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        keeps = "dense" if row.downlink_sparsity is None else f"{row.downlink_sparsity:.0%}"
        lines.append(
            f"| {row.algorithm} | {keeps} | {row.round_message_bytes:,.0f} "
            f"| {base.round_message_bytes / row.round_message_bytes:.1f}x "
            f"| {row.device_downlink_bytes / 1024:,.1f} "
            f"| {base.device_downlink_bytes / row.device_downlink_bytes:.1f}x "
            f"| {row.resyncs_per_device:.1f} | {row.accuracy:.4f} | {row.seconds} |"
        )
    lines += [
        "",
        "The device's figure includes what a run of this length cannot amortise: two dense "
        "rounds, one pair (twice the dense model) and the final dense model. Per round "
        "after that, a device downloads only the broadcast.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--model", default="mlp-wide")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    command = shlex.join(["python", "benchmarks/downlink.py", *(argv or sys.argv[1:])])
    rows = [run("byz-ef21", None, args)]
    for sparsity in SPARSITIES:
        rows.append(run("byz-ef21-bc", sparsity, args))
        print(rows[-1], file=sys.stderr)
    report = render(rows, args, command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    args.out.with_suffix(".json").write_text(json.dumps([asdict(r) for r in rows], indent=2))
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
