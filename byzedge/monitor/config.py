"""The monitor's configuration: a strict, frozen TOML schema (``monitor.toml``).

``byzedge init`` writes this file next to the fleet's other configs::

    fleet = "plant-7"
    coordinator_key = "../keys/coordinator.pub"   # optional: verify signed audit heads

    [mqtt]
    url = "mqtts://broker.example:8883"
    [mqtt.tls]
    ca_file = "../pki/ca.crt"
    cert_file = "../pki/monitor.crt"     # certificate CN "monitor": the ACL's read-only user
    key_file = "../pki/monitor.key"

Relative paths resolve against the file's folder. The monitor only subscribes: the broker
ACL's ``monitor`` account may read ``byzedge/#`` and write nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from byzedge.daemon.config import (
    ConfigError,
    StrictModel,
    checked_identifier,
    format_validation_error,
    read_toml,
    resolve_mqtt_paths,
    resolve_paths,
)
from byzedge.daemon.mqtt import MqttSettings

__all__ = ["MonitorConfig", "load_monitor_config"]


class MonitorConfig(StrictModel):
    """Everything ``byzedge monitor`` needs."""

    fleet: str = Field(description="Fleet name; the second level of every topic.")
    coordinator_key: Path | None = Field(
        None,
        description=(
            "PEM public key of the coordinator; when set, the audit head carried by round "
            "summaries is verified against it."
        ),
    )
    mqtt: MqttSettings = Field(default_factory=MqttSettings, description="Broker connection.")

    @field_validator("fleet")
    @classmethod
    def _check_fleet(cls, value: str) -> str:
        return checked_identifier(value, "fleet")


def load_monitor_config(path: Path, overrides: dict[str, Any] | None = None) -> MonitorConfig:
    """Read ``path`` (TOML), apply ``overrides``, validate.

    Raises
    ------
    ConfigError
        With one line per problem, naming the file and the key.
    """
    raw = read_toml(path)
    raw.update(overrides or {})
    resolve_paths(raw, ("coordinator_key",), path.parent)
    resolve_mqtt_paths(raw, path.parent)
    try:
        return MonitorConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc)) from exc
