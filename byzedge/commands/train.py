r"""``byzedge train``: run the coordinator with the robustness settings given on the line.

The command users of the product's description expect::

    byzedge train --config coordinator.toml --byzantine-defense clipping-vr \
        --max-byzantine-fraction 0.2

It is ``byzedge coordinator run`` with those flags overriding the file.
``--certified-robustness`` sets ``certified_robustness``: each round's summary, audit
record and the monitor then state the certified bound on how far the Byzantine share could
have moved the aggregate (:mod:`byzedge.coordinator.certified`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from byzedge.commands import coordinator
from byzedge.commands._common import add_runtime_flags

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """``byzedge train``'s options."""
    parser = argparse.ArgumentParser(
        prog="byzedge train",
        description="Run the coordinator (federated training) with these settings.",
    )
    parser.add_argument("--config", type=Path, required=True, help="coordinator.toml")
    parser.add_argument("--rounds", type=int, help="override `rounds` from the file")
    coordinator.add_rule_flags(parser)  # --certified-robustness among them
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING...")
    add_runtime_flags(parser, "coordinator.key")
    return parser


def main(argv: Sequence[str]) -> int:
    """Entry point of ``byzedge train`` (exit codes as ``byzedge coordinator run``)."""
    args = build_parser().parse_args(argv)
    forwarded = ["run", "--config", str(args.config), "--log-level", args.log_level]
    if args.certified_robustness:
        forwarded.append("--certified-robustness")
    for flag, value in (
        ("--rounds", args.rounds),
        ("--byzantine-defense", args.byzantine_defense),
        ("--max-byzantine-fraction", args.max_byzantine_fraction),
        ("--state-dir", args.state_dir),
        ("--signing-key", args.signing_key),
        ("--tls-key", args.tls_key),
    ):
        if value is not None:
            forwarded += [flag, str(value)]
    return coordinator.main(forwarded)
