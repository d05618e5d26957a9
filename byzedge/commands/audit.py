"""``byzedge audit verify``: check the audit log's hash chain."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from byzedge.commands._common import fail

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The audit subcommands."""
    parser = argparse.ArgumentParser(prog="byzedge audit", description="Audit log tools.")
    sub = parser.add_subparsers(dest="action", required=True)
    verify = sub.add_parser("verify", help="verify every record and the chain linking them")
    verify.add_argument("path", type=Path, help="audit.jsonl in the coordinator's state_dir")
    return parser


def main(argv: Sequence[str]) -> int:
    """Entry point of ``byzedge audit``; exit 3 when the log was tampered with."""
    args = build_parser().parse_args(argv)
    from coordinator.audit import verify_audit_log  # noqa: PLC0415

    if not args.path.is_file():
        return fail("audit", f"{args.path}: no such file")
    result = verify_audit_log(args.path)
    if result.ok:
        print(f"{args.path}: ok, {result.records} records, chain intact")
        return 0
    return fail(
        "audit",
        f"{args.path}: line {result.first_bad_line}: {result.problem} "
        f"(first {result.records} records intact)",
        3,
    )
