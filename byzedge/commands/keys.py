"""``byzedge keys generate``: Ed25519 keys for the coordinator and devices."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from byzedge.commands._common import fail

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The keys subcommands."""
    parser = argparse.ArgumentParser(prog="byzedge keys", description="Key management.")
    sub = parser.add_subparsers(dest="action", required=True)
    generate = sub.add_parser("generate", help="write NAME.key (0600) and NAME.pub")
    generate.add_argument("names", nargs="+", help="coordinator name or device ids")
    generate.add_argument("--dir", type=Path, default=Path("keys"), help="output folder")
    generate.add_argument("--force", action="store_true", help="overwrite existing keys")
    return parser


def main(argv: Sequence[str]) -> int:
    """Entry point of ``byzedge keys``."""
    args = build_parser().parse_args(argv)
    from byzedge.protocol.errors import TopicError  # noqa: PLC0415
    from byzedge.protocol.signing import SigningKey  # noqa: PLC0415
    from byzedge.protocol.topics import validate_identifier  # noqa: PLC0415

    for name in args.names:
        try:
            validate_identifier(name, "key name")
        except TopicError as exc:
            return fail("keys", str(exc))
        path = args.dir / f"{name}.key"
        if path.exists() and not args.force:
            return fail("keys", f"{path} exists; pass --force to replace it", 1)
        key = SigningKey.generate()
        key.save(path)
        print(f"{path} (key id {key.key_id}), public key {path.with_suffix('.pub')}")
    return 0
