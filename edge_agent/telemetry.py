"""Device telemetry (psutil, injected) and the eligibility rules that gate training.

A device never trains when it is busy, hot, low on memory or low on battery: the
limits come from ``[eligibility]`` in ``agent.toml``; unset limits are not checked, and a
reading the hardware does not offer (no temperature sensor, no battery) never blocks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

from byzedge.edge_agent.config import EligibilityConfig

__all__ = ["Eligibility", "TelemetrySnapshot", "check_eligibility", "read_telemetry"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TelemetrySnapshot:
    """One reading of the device's state."""

    cpu_percent: float
    memory_percent: float
    memory_available_mb: float
    temperature_c: float | None
    battery_percent: float | None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Eligibility:
    """Whether the device may train now, and why not."""

    eligible: bool
    reason: str | None = None


def read_telemetry(ps: ModuleType | None = None) -> TelemetrySnapshot:
    """Read CPU, memory, temperature and battery through ``ps`` (psutil by default)."""
    if ps is None:
        import psutil  # noqa: PLC0415 - the edge extra provides it; tests inject a fake

        ps = psutil
    memory = ps.virtual_memory()
    return TelemetrySnapshot(
        cpu_percent=float(ps.cpu_percent(interval=None)),
        memory_percent=float(memory.percent),
        memory_available_mb=float(memory.available) / 2**20,
        temperature_c=_hottest_sensor(ps),
        battery_percent=_battery(ps),
    )


def _hottest_sensor(ps: ModuleType) -> float | None:
    reader = getattr(ps, "sensors_temperatures", None)
    if reader is None:
        return None
    try:
        sensors = reader() or {}
    except (OSError, RuntimeError):
        return None
    readings = [entry.current for entries in sensors.values() for entry in entries]
    return float(max(readings)) if readings else None


def _battery(ps: ModuleType) -> float | None:
    reader = getattr(ps, "sensors_battery", None)
    if reader is None:
        return None
    try:
        battery = reader()
    except (OSError, RuntimeError):
        return None
    if battery is None or battery.power_plugged:
        return None
    return float(battery.percent)


def check_eligibility(snapshot: TelemetrySnapshot, rules: EligibilityConfig) -> Eligibility:
    """Apply ``rules`` to ``snapshot``."""
    if rules.max_cpu_percent is not None and snapshot.cpu_percent > rules.max_cpu_percent:
        return Eligibility(False, f"cpu {snapshot.cpu_percent:.0f}% > {rules.max_cpu_percent}%")
    if (
        rules.min_available_memory_mb is not None
        and snapshot.memory_available_mb < rules.min_available_memory_mb
    ):
        return Eligibility(
            False,
            f"memory {snapshot.memory_available_mb:.0f} MB < {rules.min_available_memory_mb} MB",
        )
    if (
        rules.max_temperature_c is not None
        and snapshot.temperature_c is not None
        and snapshot.temperature_c > rules.max_temperature_c
    ):
        return Eligibility(
            False, f"temperature {snapshot.temperature_c:.0f} C > {rules.max_temperature_c} C"
        )
    if (
        rules.min_battery_percent is not None
        and snapshot.battery_percent is not None
        and snapshot.battery_percent < rules.min_battery_percent
    ):
        return Eligibility(
            False, f"battery {snapshot.battery_percent:.0f}% < {rules.min_battery_percent}%"
        )
    return Eligibility(True)
