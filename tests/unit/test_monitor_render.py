"""The monitor's frame as plain text, and monitor.toml."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from byzedge.cli import main
from byzedge.daemon.config import ConfigError
from byzedge.monitor.config import load_monitor_config
from byzedge.monitor.render import format_age, render_text, sparkline
from byzedge.monitor.view import FleetView

FLEET = "plant-7"


def encode(data: object) -> bytes:
    return json.dumps(data).encode()


@pytest.fixture
def view() -> FleetView:
    view = FleetView(FLEET)
    for number, accuracy in [(1, 0.3), (2, 0.6), (3, 0.9)]:
        view.apply(
            f"byzedge/{FLEET}/coordinator/status",
            encode(
                {
                    "round": number,
                    "cohort_size": 4,
                    "accepted": 3,
                    "rejected": {"replayed": 1},
                    "reputations": {"dev-000": 0.987, "dev-666": 0.123},
                    "validation_accuracy": accuracy,
                    "duration_s": 2.5,
                    "fallback": "coordinate-median" if number == 3 else None,
                    "clip_threshold": 0.25,
                }
            ),
            received=990.0,
        )
    view.apply(
        f"byzedge/{FLEET}/status/dev-000",
        encode({"state": "training", "time": 958.0, "telemetry": {"cpu_percent": 42.0}}),
    )
    view.apply(f"byzedge/{FLEET}/status/dev-666", encode({"state": "offline", "time": 400.0}))
    view.apply(
        f"byzedge/{FLEET}/alerts",
        encode({"round": 3, "device": "dev-666", "reason": "anomalous-update", "score": 9.25}),
        received=995.0,
    )
    return view


def test_the_frame_shows_rounds_devices_reputations_and_alerts(view: FleetView) -> None:
    text = render_text(view, now=1000.0)

    assert f"fleet {FLEET}" in text
    assert "coordinator: online" in text
    assert "3/4" in text
    assert "replayed 1" in text
    assert "coordinate-median" in text
    for expected in ("dev-000", "0.987", "training", "dev-666", "0.123", "offline"):
        assert expected in text
    assert "anomalous-update" in text
    assert "9.25" in text
    assert "cpu 42%" in text
    assert "\x1b" not in text  # plain text: no colour codes


def test_the_lowest_reputation_is_listed_first(view: FleetView) -> None:
    text = render_text(view, now=1000.0)

    assert text.index("dev-666") < text.index("dev-000")


def test_status_ages_count_from_the_status_time(view: FleetView) -> None:
    lines = render_text(view, now=1000.0).splitlines()

    row = next(line for line in lines if "dev-000" in line and "training" in line)
    assert "42s" in row


def test_the_frame_says_when_no_summary_arrived_yet() -> None:
    text = render_text(FleetView(FLEET), now=0.0)

    assert "waiting for a round summary" in text
    assert "none" in text  # no alerts


def test_the_frame_fits_the_width(view: FleetView) -> None:
    text = render_text(view, now=1000.0, width=100)

    assert max(len(line) for line in text.splitlines()) <= 100


def test_markup_in_a_reason_is_shown_not_obeyed() -> None:
    view = FleetView(FLEET)
    view.apply(f"byzedge/{FLEET}/status/dev-1", encode({"state": "busy", "reason": "[red]x[/]"}))

    assert "[red]x[/]" in render_text(view, now=0.0, width=160)


def test_the_sparkline_scales_between_min_and_max() -> None:
    assert sparkline([0.1, 0.5, 0.9]) == "▁▅█"
    assert sparkline([0.7, 0.7]) == "██"
    assert sparkline([]) == ""


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(None, "-"), (-5.0, "0s"), (59.9, "59s"), (61.0, "1m"), (7200.0, "2h"), (3 * 86400.0, "3d")],
)
def test_ages_are_short(seconds: float | None, shown: str) -> None:
    assert format_age(seconds) == shown


# -- monitor.toml -----------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "monitor" / "monitor.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_the_config_resolves_paths_against_its_folder(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'fleet = "plant-7"\ncoordinator_key = "../keys/coordinator.pub"\n'
        '[mqtt]\nurl = "mqtts://broker:8883"\n[mqtt.tls]\nca_file = "ca.crt"\n',
    )

    config = load_monitor_config(path)

    assert config.coordinator_key == (tmp_path / "keys" / "coordinator.pub").resolve()
    assert config.mqtt.tls is not None
    assert config.mqtt.tls.ca_file == (tmp_path / "monitor" / "ca.crt").resolve()


def test_the_coordinator_key_is_optional(tmp_path: Path) -> None:
    assert load_monitor_config(write(tmp_path, 'fleet = "f"\n')).coordinator_key is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('fleet = "f"\nrefresh = 1\n', "refresh"),
        ('fleet = "a/b"\n', "fleet"),
        ("", "fleet"),
        ('fleet = "f"\n[mqtt]\nurl = "http://x"\n', "mqtt.url"),
    ],
)
def test_bad_configs_fail_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_monitor_config(write(tmp_path, text))


def test_the_command_fails_with_exit_2_on_a_bad_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, 'fleet = "f"\nbogus = 1\n')

    assert main(["monitor", "--once", "--config", str(path)]) == 2
    assert "byzedge monitor:" in capsys.readouterr().err


def test_the_command_fails_with_exit_2_on_a_missing_coordinator_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, 'fleet = "f"\ncoordinator_key = "nope.pub"\n')

    assert main(["monitor", "--once", "--config", str(path)]) == 2
    assert "coordinator_key" in capsys.readouterr().err


def test_the_command_fails_with_exit_2_on_unreadable_tls_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        'fleet = "f"\n[mqtt]\nurl = "mqtts://127.0.0.1:1"\n'
        '[mqtt.tls]\nca_file = "ca.crt"\ncert_file = "m.crt"\nkey_file = "m.key"\n',
    )

    assert main(["monitor", "--once", "--config", str(path)]) == 2
    assert "cannot set up the MQTT client" in capsys.readouterr().err
