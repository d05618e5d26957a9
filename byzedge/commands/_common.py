"""Helpers shared by the daemon subcommands."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from byzedge.daemon.mqtt import MqttSettings

__all__ = [
    "add_runtime_flags",
    "fail",
    "probe_problems",
    "report_problems",
    "runtime_overrides",
    "state_dir_problems",
    "tls_problems",
    "with_tls_key",
]


def fail(command: str, message: str, code: int = 2) -> int:
    """Print ``byzedge COMMAND: message`` on stderr and return ``code``."""
    print(f"byzedge {command}: {message}", file=sys.stderr)
    return code


def report_problems(command: str, problems: Sequence[str], code: int = 2) -> int:
    """Print each problem as its own ``byzedge COMMAND: ...`` line; return ``code`` (0 if none)."""
    for problem in problems:
        fail(command, problem, code)
    return code if problems else 0


def add_runtime_flags(parser: argparse.ArgumentParser, key_name: str) -> None:
    """Add ``--state-dir``, ``--signing-key`` and ``--tls-key`` (systemd passes them).

    They override the file's ``state_dir``, ``signing_key`` and ``mqtt.tls.key_file``: under
    systemd the state lives in ``$STATE_DIRECTORY`` (``ProtectSystem=strict`` makes the
    config's folder read-only) and the private keys in ``$CREDENTIALS_DIRECTORY``.
    """
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="override state_dir (systemd: ${STATE_DIRECTORY})",
    )
    parser.add_argument(
        "--signing-key",
        type=Path,
        help=f"override signing_key (systemd: ${{CREDENTIALS_DIRECTORY}}/{key_name})",
    )
    parser.add_argument(
        "--tls-key",
        type=Path,
        help="override mqtt.tls.key_file (systemd: ${CREDENTIALS_DIRECTORY}/mqtt.key)",
    )


def runtime_overrides(args: argparse.Namespace) -> dict[str, str]:
    """The loader overrides for ``--state-dir`` and ``--signing-key``, made absolute.

    A path on the command line is relative to where the command runs, not to the config
    file's folder, so it is resolved before the loader sees it.
    """
    overrides: dict[str, str] = {}
    for flag in ("state_dir", "signing_key"):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[flag] = str(Path(value).resolve())
    return overrides


def with_tls_key(settings: MqttSettings, key_file: Path | None) -> MqttSettings:
    """``settings`` with ``tls.key_file`` replaced by ``key_file`` (when given).

    Raises
    ------
    ValueError
        When a key is given but the config has no ``[mqtt.tls]`` table.
    """
    if key_file is None:
        return settings
    if settings.tls is None:
        msg = "--tls-key was given but the config has no [mqtt.tls] table"
        raise ValueError(msg)
    tls = settings.tls.model_copy(update={"key_file": key_file.resolve()})
    return settings.model_copy(update={"tls": tls})


def tls_problems(settings: MqttSettings, account: str) -> list[str]:
    """What would break the TLS connection of ``account`` (its certificate's expected CN).

    Without an ``[mqtt.tls]`` table there is nothing to check offline.
    """
    from byzedge.daemon import pki  # noqa: PLC0415

    tls = settings.tls
    if tls is None:
        return []
    if tls.cert_file is None:
        problems = pki.check_readable(tls.ca_file, "mqtt.tls.ca_file")
        if tls.key_file is not None:
            problems.append(f"mqtt.tls.key_file {tls.key_file}: set without a cert_file")
        return problems
    return [
        f"mqtt.tls.{problem}"
        for problem in pki.check_certificate(
            tls.cert_file, ca_file=tls.ca_file, key_file=tls.key_file, expected_cn=account
        )
    ]


def probe_problems(
    settings: MqttSettings,
    client_id: str,
    *,
    publish_topics: Sequence[str],
    subscribe_topics: Sequence[str],
) -> list[str]:
    """``check-config --online``: connect as this account and try its topics.

    Returns the problems :func:`byzedge.daemon.mqtt_probe.probe_broker` found (empty when fine).
    """
    try:
        from byzedge.daemon.mqtt_probe import probe_broker  # noqa: PLC0415 - only with --online
    except ImportError as exc:
        return [f"--online is not available in this installation: {exc}"]
    return probe_broker(
        settings, client_id, publish_topics=publish_topics, subscribe_topics=subscribe_topics
    )


def state_dir_problems(state_dir: Path) -> list[str]:
    """``[]`` if this process can create or write ``state_dir``, else why not."""
    if state_dir.exists():
        if not state_dir.is_dir():
            return [f"state_dir {state_dir}: not a folder"]
        if not os.access(state_dir, os.W_OK | os.X_OK):
            return [f"state_dir {state_dir}: not writable by this user"]
        return []
    parent = state_dir.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return [f"state_dir {state_dir}: cannot be created ({parent} is not writable)"]
    return []
