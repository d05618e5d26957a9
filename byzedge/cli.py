"""The ``byzedge`` command: a thin dispatcher that imports each subcommand only when used.

A device installs only the ``edge`` extra, so ``byzedge agent ...`` must never import what
the demo or the coordinator need (matplotlib, sklearn...), and ``byzedge agent infer``
must never import torch.

Exit codes: 0 success; 1 runtime failure; 2 usage or configuration error; 3 verification
failed (``audit verify``); 130 interrupted.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

__all__ = ["COMMANDS", "main"]

COMMANDS = {
    "demo": ("byzedge.commands.demo", "run Byzantine attack-vs-defense fleets side by side"),
    "sim": ("byzedge.commands.sim", "simulate attack-vs-defense fleets in memory"),
    "agent": ("byzedge.commands.agent", "run the edge agent, or infer with its model"),
    "coordinator": ("byzedge.commands.coordinator", "run the coordinator"),
    "train": ("byzedge.commands.train", "run the coordinator with robustness flags"),
    "init": (
        "byzedge.commands.init",
        "provision a fleet: CA, certificates, keys, broker and daemon configs",
    ),
    "keys": ("byzedge.commands.keys", "generate Ed25519 keys for devices and coordinator"),
    "audit": ("byzedge.commands.audit", "verify the coordinator's hash-chained audit log"),
    "monitor": ("byzedge.commands.monitor", "watch a fleet: rounds, accuracy, devices, alerts"),
    "faults": ("byzedge.commands.faults", "validate and describe fault plans"),
    "bench": ("byzedge.commands.bench", "run speed benchmarks"),
    "model": ("byzedge.commands.model", "export a PyTorch model's ONNX template, show a layout"),
}

_USAGE = "usage: byzedge [-h] [--version] {" + ",".join(COMMANDS) + "} ..."


def _help() -> str:
    lines = [_USAGE, "", "Byzantine-robust federated learning for edge fleets.", "", "commands:"]
    lines += [f"  {name:<12} {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "Run `byzedge COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a subcommand; return its exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(_help())
        return 0 if args else 2
    if args[0] == "--version":
        from byzedge import __version__  # noqa: PLC0415

        print(f"byzedge {__version__}")
        return 0
    entry = COMMANDS.get(args[0])
    if entry is None:
        print(f"{_USAGE}\nbyzedge: unknown command {args[0]!r}", file=sys.stderr)
        return 2
    module = importlib.import_module(entry[0])
    try:
        code: int = module.main(args[1:])
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    raise SystemExit(main())
