"""``byzedge coordinator run | check-config``."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from byzedge.commands._common import (
    add_runtime_flags,
    fail,
    probe_problems,
    report_problems,
    runtime_overrides,
    state_dir_problems,
    tls_problems,
    with_tls_key,
)

if TYPE_CHECKING:
    from coordinator.config import CoordinatorConfig

__all__ = ["build_parser", "main"]

ACCOUNT = "coordinator"
"""The broker account (certificate CN) the ACL grants the coordinator's topics to."""


def build_parser() -> argparse.ArgumentParser:
    """The coordinator's subcommands."""
    parser = argparse.ArgumentParser(prog="byzedge coordinator", description="The coordinator.")
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="run rounds until done (or forever with rounds = 0)")
    run.add_argument("--config", type=Path, required=True, help="coordinator.toml")
    run.add_argument("--rounds", type=int, help="override `rounds` from the file")
    run.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING...")
    add_runtime_flags(run, "coordinator.key")
    check = sub.add_parser(
        "check-config",
        help="check coordinator.toml and what breaks at run time: keys, certificates, devices",
    )
    check.add_argument("--config", type=Path, required=True, help="coordinator.toml")
    add_runtime_flags(check, "coordinator.key")
    check.add_argument(
        "--online",
        action="store_true",
        help="also connect to the broker and check the ACL lets the coordinator publish",
    )
    return parser


def main(argv: Sequence[str]) -> int:
    """Entry point of ``byzedge coordinator``.

    Exit codes: 0 ok; 1 runtime failure; 2 usage or configuration error, including every
    problem ``check-config`` finds (offline, or with ``--online``).
    """
    args = build_parser().parse_args(argv)
    from coordinator.config import ConfigError, load_coordinator_config  # noqa: PLC0415
    from coordinator.devices import DeviceRegistry  # noqa: PLC0415
    from protocol.signing import SigningKey  # noqa: PLC0415

    overrides: dict[str, object] = dict(runtime_overrides(args))
    if getattr(args, "rounds", None) is not None:
        overrides["rounds"] = args.rounds
    try:
        config = load_coordinator_config(args.config, overrides)
        config = config.model_copy(update={"mqtt": with_tls_key(config.mqtt, args.tls_key)})
    except (ConfigError, ValueError) as exc:
        return fail("coordinator", str(exc))
    problems = _offline_problems(config)
    enrolment = _enrolment_problems(config.devices_dir) if config.devices_dir.is_dir() else []
    if args.action == "check-config":
        problems += enrolment
    if problems:
        return report_problems("coordinator", problems)
    key = SigningKey.load(config.signing_key)
    devices = DeviceRegistry.load(config.devices_dir)
    if args.action == "check-config":
        if args.online:
            code = _online(config)
            if code:
                return code
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


def _offline_problems(config: CoordinatorConfig) -> list[str]:
    """What would stop the coordinator at run time, one line per problem."""
    from daemon import pki  # noqa: PLC0415

    beside = config.signing_key.with_suffix(".pub")
    # init and `keys generate` write it; under systemd the credential comes alone.
    publics = [("public key", beside)] if beside.exists() else []
    problems = pki.check_key_pair(config.signing_key, publics)
    if not config.devices_dir.is_dir():
        problems.append(f"devices_dir {config.devices_dir}: not a folder")
    problems += tls_problems(config.mqtt, ACCOUNT)
    problems += state_dir_problems(config.state_dir)
    return problems


def _enrolment_problems(devices_dir: Path) -> list[str]:
    """Enrolment files the coordinator would skip (at run time only with a warning)."""
    from daemon import pki  # noqa: PLC0415
    from protocol.errors import TopicError  # noqa: PLC0415
    from protocol.topics import validate_device_id  # noqa: PLC0415

    problems: list[str] = []
    for path in sorted(devices_dir.glob("*.pub")):
        try:
            validate_device_id(path.stem)
        except TopicError as exc:
            problems.append(f"devices_dir {path}: {exc}")
            continue
        problems += pki.check_verify_key(path, "devices_dir")[1]
    return problems


def _online(config: CoordinatorConfig) -> int:
    from protocol import topics  # noqa: PLC0415

    problems = probe_problems(
        config.mqtt,
        f"{ACCOUNT}-check-{os.getpid()}",
        publish_topics=[
            topics.model_topic(config.fleet),
            topics.coordinator_status_topic(config.fleet),
            topics.alerts_topic(config.fleet),
        ],
        subscribe_topics=[
            topics.update_wildcard(config.fleet),
            topics.device_status_wildcard(config.fleet),
        ],
    )
    return report_problems("coordinator", problems)
