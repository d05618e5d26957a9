"""``byzedge coordinator run | check-config``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from byzedge.commands._common import fail

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The coordinator's subcommands."""
    parser = argparse.ArgumentParser(prog="byzedge coordinator", description="The coordinator.")
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="run rounds until done (or forever with rounds = 0)")
    run.add_argument("--config", type=Path, required=True, help="coordinator.toml")
    run.add_argument("--rounds", type=int, help="override `rounds` from the file")
    run.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING...")
    check = sub.add_parser("check-config", help="validate coordinator.toml, keys and devices")
    check.add_argument("--config", type=Path, required=True, help="coordinator.toml")
    return parser


def main(argv: Sequence[str]) -> int:
    """Entry point of ``byzedge coordinator``."""
    args = build_parser().parse_args(argv)
    from coordinator.config import ConfigError, load_coordinator_config  # noqa: PLC0415
    from coordinator.devices import DeviceRegistry  # noqa: PLC0415
    from protocol.errors import ProtocolError  # noqa: PLC0415
    from protocol.signing import SigningKey  # noqa: PLC0415

    overrides = {"rounds": args.rounds} if getattr(args, "rounds", None) is not None else {}
    try:
        config = load_coordinator_config(args.config, overrides)
    except ConfigError as exc:
        return fail("coordinator", str(exc))
    try:
        key = SigningKey.load(config.signing_key)
    except (OSError, ProtocolError) as exc:
        return fail("coordinator", f"cannot load signing key: {exc}")
    if not config.devices_dir.is_dir():
        return fail("coordinator", f"devices_dir {config.devices_dir} is not a folder")
    devices = DeviceRegistry.load(config.devices_dir)
    if args.action == "check-config":
        print(f"{args.config}: ok (fleet {config.fleet}, {len(devices)} enrolled devices)")
        return 0
    from coordinator.service import Coordinator  # noqa: PLC0415
    from daemon.logging import configure_logging, running_under_journald  # noqa: PLC0415
    from daemon.signals import install_signal_handlers  # noqa: PLC0415

    configure_logging(args.log_level, journald=running_under_journald())
    try:
        coordinator = Coordinator(config, signing_key=key, devices=devices)
    except ValueError as exc:
        return fail("coordinator", str(exc))
    with install_signal_handlers() as signals:
        return coordinator.run(signals.stop, signals.reload)
