"""Configuration plumbing shared by every byzedge process: strict models, TOML, errors.

Both daemons (and the monitor) read a TOML file into a strict, frozen pydantic model that
rejects unknown keys (a typo never silently falls back to a default), resolve relative
paths against the file's folder (so a fleet folder can be moved as a whole) and report
every problem as one line naming the file and the key. That is the same for every
process, so it lives here, below them: an agent loading its config imports nothing of the
coordinator.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from byzedge.protocol.errors import TopicError
from byzedge.protocol.topics import validate_device_id, validate_identifier

__all__ = [
    "ConfigError",
    "StrictModel",
    "checked_device_id",
    "checked_identifier",
    "format_validation_error",
    "read_toml",
    "resolve_mqtt_paths",
    "resolve_paths",
]


class ConfigError(Exception):
    """A configuration file is missing, unreadable or invalid (one line, for humans)."""


class StrictModel(BaseModel):
    """Base of every configuration table: frozen, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file, turning every failure into a :class:`ConfigError`."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as exc:
        msg = f"{path}: no such file"
        raise ConfigError(msg) from exc
    except (OSError, tomllib.TOMLDecodeError) as exc:
        msg = f"{path}: {exc}"
        raise ConfigError(msg) from exc


def format_validation_error(path: Path, exc: ValidationError) -> str:
    """One line per problem: ``file: key.path: message``."""
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        lines.append(f"{path}: {where}: {error['msg']}")
    return "; ".join(lines)


def resolve_paths(table: dict[str, Any], keys: tuple[str, ...], folder: Path) -> None:
    """Resolve ``table``'s relative path values under ``keys`` against ``folder``, in place."""
    for key in keys:
        if isinstance(table.get(key), str):
            table[key] = str((folder / table[key]).resolve())


def resolve_mqtt_paths(raw: dict[str, Any], folder: Path) -> None:
    """Resolve the ``[mqtt]`` table's relative file paths against ``folder``, in place."""
    mqtt = raw.get("mqtt")
    if not isinstance(mqtt, dict):
        return
    resolve_paths(mqtt, ("password_file",), folder)
    tls = mqtt.get("tls")
    if isinstance(tls, dict):
        resolve_paths(tls, ("ca_file", "cert_file", "key_file"), folder)


def checked_identifier(value: str, what: str) -> str:
    """Validate a fleet, device or sender id as a pydantic field validator must.

    :func:`validate_identifier` raises :class:`TopicError`, which pydantic would let escape
    as is; a ``ValueError`` becomes a validation error that names the key.
    """
    try:
        return validate_identifier(value, what)
    except TopicError as exc:
        raise ValueError(str(exc)) from exc


def checked_device_id(value: str) -> str:
    """:func:`checked_identifier` for a device id, which must not be a reserved name."""
    try:
        return validate_device_id(value)
    except TopicError as exc:
        raise ValueError(str(exc)) from exc
