"""Plot accuracy per round from ``byzedge sim matrix`` outputs (``matrix.json``'s runs).

Usage::

    python benchmarks/robustness_curves.py OUT.png MATRIX.json [MATRIX.json ...]
        [--fraction F] [--attack A] [--title T]

One line per (attack, defense) run kept by the filters; clean runs are dashed. With
several matrices each label starts with the matrix's folder name.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from byzedge.fleet_sim.report import plot_accuracy


def main() -> int:
    """Parse the options, plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("matrices", type=Path, nargs="+")
    parser.add_argument("--fraction", type=float, help="keep runs of this fraction (and clean)")
    parser.add_argument("--attack", help="keep runs of this attack (and clean)")
    parser.add_argument("--no-clean", action="store_true", help="leave the clean runs out")
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    curves = []
    for path in args.matrices:
        document = json.loads(path.read_text())
        for run in document["runs"]:
            clean = run["attack"] is None
            if clean and args.no_clean:
                continue
            if (
                not clean
                and args.fraction is not None
                and run["byzantine_fraction"] != args.fraction
            ):
                continue
            if not clean and args.attack is not None and run["attack"] != args.attack:
                continue
            label = f"{run['defense']} / {run['attack'] or 'clean'}"
            if len(args.matrices) > 1:
                label = f"{path.parent.name}: {label}"
            curves.append((label, run["accuracies"]))
    plot_accuracy(curves, args.out, args.title)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
