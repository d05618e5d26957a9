"""Telemetry through an injected psutil, and the eligibility rules."""

from __future__ import annotations

from types import ModuleType, SimpleNamespace

import pytest

from byzedge.edge_agent.config import EligibilityConfig
from byzedge.edge_agent.telemetry import TelemetrySnapshot, check_eligibility, read_telemetry


def _fake_psutil(
    *, temperatures: dict[str, list[float]] | None, battery: float | None
) -> ModuleType:
    module = ModuleType("fake_psutil")
    module.cpu_percent = lambda interval=None: 42.0  # type: ignore[attr-defined]
    module.virtual_memory = lambda: SimpleNamespace(percent=50.0, available=512 * 2**20)  # type: ignore[attr-defined]
    if temperatures is not None:
        module.sensors_temperatures = lambda: {  # type: ignore[attr-defined]
            name: [SimpleNamespace(current=value) for value in values]
            for name, values in temperatures.items()
        }
    module.sensors_battery = lambda: (  # type: ignore[attr-defined]
        None if battery is None else SimpleNamespace(percent=battery, power_plugged=False)
    )
    return module


def _snapshot(**changes: float | None) -> TelemetrySnapshot:
    values: dict[str, float | None] = {
        "cpu_percent": 10.0,
        "memory_percent": 50.0,
        "memory_available_mb": 512.0,
        "temperature_c": 50.0,
        "battery_percent": None,
    }
    values.update(changes)
    return TelemetrySnapshot(**values)  # type: ignore[arg-type]


def test_read_telemetry_takes_the_hottest_sensor_and_battery() -> None:
    ps = _fake_psutil(temperatures={"cpu": [51.0, 63.5], "gpu": [40.0]}, battery=77.0)

    snapshot = read_telemetry(ps)

    assert snapshot.cpu_percent == 42.0
    assert snapshot.memory_available_mb == pytest.approx(512.0)
    assert snapshot.temperature_c == 63.5
    assert snapshot.battery_percent == 77.0


def test_devices_without_sensors_report_none() -> None:
    snapshot = read_telemetry(_fake_psutil(temperatures=None, battery=None))

    assert snapshot.temperature_c is None
    assert snapshot.battery_percent is None


@pytest.mark.parametrize(
    ("changes", "rules", "reason_word"),
    [
        ({"cpu_percent": 95.0}, {"max_cpu_percent": 80.0}, "cpu"),
        ({"memory_available_mb": 10.0}, {"min_available_memory_mb": 64.0}, "memory"),
        ({"temperature_c": 91.0}, {"max_temperature_c": 80.0}, "temperature"),
        ({"battery_percent": 5.0}, {"min_battery_percent": 20.0}, "battery"),
    ],
)
def test_a_busy_hot_or_drained_device_does_not_train(
    changes: dict[str, float], rules: dict[str, float], reason_word: str
) -> None:
    verdict = check_eligibility(_snapshot(**changes), EligibilityConfig(**rules))

    assert not verdict.eligible
    assert verdict.reason is not None
    assert reason_word in verdict.reason


def test_missing_readings_never_block_training() -> None:
    snapshot = _snapshot(temperature_c=None, battery_percent=None)
    rules = EligibilityConfig(max_temperature_c=10.0, min_battery_percent=90.0)

    assert check_eligibility(snapshot, rules).eligible
