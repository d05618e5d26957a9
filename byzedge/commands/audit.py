"""``byzedge audit verify``: check the audit log's chain, segments and signed checkpoints.

``byzedge audit verify PATH [--key coordinator.pub] [--head FILE_OR_JSON]``

PATH is ``audit.jsonl`` (its rotated segments ``audit.jsonl.NNNNNN`` are walked too), the
folder holding it, or one of its segments. Without ``--key`` only the hash chain is
checked, and the output says that signatures were not; with it every checkpoint
signature is verified and the signed head file beside the log (``audit.head.json``) must
exist and match. ``--head`` takes a head published elsewhere (the coordinator's retained
status message, saved by a monitor, as a file or as JSON text): the log must hold the
record it names, which is what catches a truncation hidden by an older local head.

Exit codes: 0 intact; 2 usage error (no such log, unreadable key or head); 3 the log
failed verification (one line on stderr names the file, the line and the reason).
"""

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
    verify = sub.add_parser(
        "verify",
        help="verify every record, the chain linking them and the signed checkpoints",
        description="Verify the coordinator's audit log. Exit 0: intact; 2: usage error; "
        "3: verification failed.",
    )
    verify.add_argument(
        "path",
        type=Path,
        help="audit.jsonl in the coordinator's state_dir (or that folder); rotated "
        "segments beside it are checked too",
    )
    verify.add_argument(
        "--key",
        type=Path,
        metavar="PUB",
        help="the coordinator's public key (PEM): check checkpoint signatures and require "
        "the signed head file",
    )
    verify.add_argument(
        "--head",
        metavar="FILE_OR_JSON",
        help="a published signed head (e.g. the retained status message) to compare against",
    )
    verify.add_argument(
        "--head-file",
        type=Path,
        metavar="PATH",
        help="the signed head file written beside the log (default: audit.head.json there)",
    )
    return parser


def main(argv: Sequence[str]) -> int:
    """Entry point of ``byzedge audit``; exit 3 when the log was tampered with."""
    args = build_parser().parse_args(argv)
    from byzedge.coordinator.audit import (  # noqa: PLC0415
        AuditError,
        SignedHead,
        resolve_log_path,
        verify_audit_log,
    )
    from byzedge.daemon.rotating import list_segments  # noqa: PLC0415
    from byzedge.protocol.errors import SignatureError  # noqa: PLC0415
    from byzedge.protocol.signing import VerifyKey  # noqa: PLC0415

    log_path = resolve_log_path(args.path)
    if not log_path.is_file() and not list_segments(log_path):
        return fail("audit", f"{args.path}: no such audit log")
    key = None
    if args.key is not None:
        try:
            key = VerifyKey.load(args.key)
        except (OSError, SignatureError) as exc:
            return fail("audit", f"{args.key}: cannot load the public key: {exc}")
    head = None
    if args.head is not None:
        text = args.head.strip()
        try:
            head = SignedHead.from_json(
                text if text.startswith("{") else Path(args.head).read_bytes()
            )
        except (OSError, AuditError) as exc:
            return fail("audit", f"--head: cannot read a signed head: {exc}")
    result = verify_audit_log(args.path, key=key, head=head, head_path=args.head_file)
    if result.ok:
        print(f"{log_path}: {result.describe()}")
        return 0
    return fail("audit", result.describe(), 3)
