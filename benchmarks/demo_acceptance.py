"""Run the demo's acceptance scenarios (issue 2) and write benchmarks/results/demo.md.

Usage: python benchmarks/demo_acceptance.py [--rounds 20] [--devices 20]
Every scenario is a real demo run (real broker, real training); figures come from the
same run's results.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

from byzedge.fleet_sim.demo import DemoOptions, run_demo

SCENARIOS = [
    ("clean", "none", 0.0, ("mean", "clipping-vr"), "dense"),
    ("gaussian-noise", "gaussian-noise", 0.2, ("mean", "clipping-vr"), "dense"),
    ("sign-flip", "sign-flip", 0.2, ("mean", "clipping-vr"), "dense"),
    ("label-flip", "label-flip", 0.2, ("mean", "clipping-vr"), "dense"),
    ("clean, top-k 0.1", "none", 0.0, ("clipping-vr",), "top-k"),
    ("sign-flip, top-k 0.1", "sign-flip", 0.2, ("clipping-vr",), "top-k"),
    ("gaussian-noise, top-k 0.1", "gaussian-noise", 0.2, ("clipping-vr",), "top-k"),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/demo.md"))
    args = parser.parse_args()
    rows = []
    for label, attack, fraction, defenses, compression in SCENARIOS:
        started = time.monotonic()
        options = DemoOptions(
            devices=args.devices,
            rounds=args.rounds,
            byzantine_fraction=fraction,
            attack=attack,
            defenses=defenses,
            compression=compression,
        )
        results = run_demo(options)
        elapsed = time.monotonic() - started
        for result in results:
            ratio = result.dense_uplink_bytes / result.uplink_bytes
            rows.append(
                f"| {label} | {result.defense} | {result.final_accuracy:.4f} | "
                f"{result.uplink_bytes:,} | {ratio:.1f}x | {elapsed:.0f} |"
            )
            print(rows[-1], flush=True)
    header = [
        "# Demo acceptance scenarios (issue 2)",
        "",
        f"Machine: {platform.node()}, {platform.machine()}, "
        f"{platform.python_implementation()} {platform.python_version()}, 2 cores.",
        f"Command: `python benchmarks/demo_acceptance.py --rounds {args.rounds} "
        f"--devices {args.devices}` (same seed 0, mosquitto via `--broker auto`).",
        "",
        "| scenario | defense | final accuracy | uplink bytes | dense / uplink "
        "| run s (all defenses) |",
        "|---|---|---|---|---|---|",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(header + rows) + "\n")


if __name__ == "__main__":
    main()
