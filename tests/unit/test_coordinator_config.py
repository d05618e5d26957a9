"""coordinator.toml: strict keys, paths relative to the file, one-line errors naming the key."""

from __future__ import annotations

from operator import attrgetter
from pathlib import Path

import pytest

from byzedge.coordinator.aggregation import build
from byzedge.coordinator.aggregation.clipping_vr import ClippingVR
from byzedge.coordinator.config import ConfigError, load_coordinator_config, rule_parameters

REQUIRED = """\
fleet = "plant-7"
signing_key = "keys/coordinator.key"
devices_dir = "devices"
state_dir = "state"
"""


def write(tmp_path: Path, text: str, name: str = "coordinator.toml") -> Path:
    folder = tmp_path / "fleet"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_coordinator_config(path)
    return str(caught.value)


def test_the_required_keys_alone_give_the_documented_defaults(tmp_path: Path) -> None:
    config = load_coordinator_config(write(tmp_path, REQUIRED))

    assert config.fleet == "plant-7"
    assert config.byzantine_defense == "clipping-vr"
    assert config.anomaly_threshold == 3.0
    assert config.reputation_decay == 0.95
    assert config.mqtt.max_message_bytes == 128 * 1024
    assert config.clip_threshold is None


@pytest.mark.parametrize(
    ("lines", "key", "relative"),
    [
        ("", "signing_key", "keys/coordinator.key"),
        ("", "devices_dir", "devices"),
        ("", "state_dir", "state"),
        # The [mqtt] table's paths are daemon.config's (test_daemon_config.py): one of
        # them shows that the loader resolves that table too.
        ('[mqtt]\npassword_file = "secrets/pw"', "mqtt.password_file", "secrets/pw"),
    ],
)
def test_each_path_key_resolves_against_the_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lines: str, key: str, relative: str
) -> None:
    path = write(tmp_path, REQUIRED + lines + "\n")
    monkeypatch.chdir(tmp_path)

    config = load_coordinator_config(path)

    assert attrgetter(key)(config) == path.parent.resolve() / relative


def test_an_override_wins_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, REQUIRED + "rounds = 5\n")

    config = load_coordinator_config(path, {"rounds": 9})

    assert config.rounds == 9


@pytest.mark.parametrize(
    ("lines", "key"),
    [
        ("byzantine_defence = 'krum'", "byzantine_defence"),
        ("[aggregation_config]\ntrim_frac = 0.1", "aggregation_config.trim_frac"),
        ("[mqtt]\npassword = 'hunter2'", "mqtt.password"),
    ],
)
def test_an_unknown_key_is_rejected_with_its_dotted_path(
    tmp_path: Path, lines: str, key: str
) -> None:
    path = write(tmp_path, REQUIRED + lines + "\n")

    assert load_error(path) == f"{path}: {key}: Extra inputs are not permitted"


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("anomaly_threshold = 0.0", "anomaly_threshold"),
        ("anomaly_threshold = -1.5", "anomaly_threshold"),
        ("reputation_decay = 1.0", "reputation_decay"),
        ("max_byzantine_fraction = 0.5", "max_byzantine_fraction"),
        ("participation_rate = 1.5", "participation_rate"),
        ("round_timeout_s = 0", "round_timeout_s"),
        ("min_updates = 0", "min_updates"),
        ("validation = 'mnist'", "validation"),
        ("rounds = 'ten'", "rounds"),
    ],
)
def test_a_bad_value_is_a_config_error_naming_the_key(tmp_path: Path, line: str, key: str) -> None:
    message = load_error(write(tmp_path, REQUIRED + line + "\n"))

    assert f": {key}: " in message


def test_a_bad_value_in_aggregation_config_names_its_dotted_path(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, REQUIRED + "[aggregation_config]\ntrim_fraction = 0.5\n"))

    assert ": aggregation_config.trim_fraction: " in message


def test_a_bad_broker_url_names_mqtt_url(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, REQUIRED + "[mqtt]\nurl = 'http://broker'\n"))

    assert ": mqtt.url: " in message


def test_a_fleet_name_that_would_break_topics_is_a_config_error_naming_fleet(
    tmp_path: Path,
) -> None:
    text = REQUIRED.replace('"plant-7"', '"plant/+"')

    message = load_error(write(tmp_path, text))

    assert ": fleet: " in message


def test_a_bad_coordinator_name_is_a_config_error_naming_name(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, REQUIRED + 'name = "coord#1"\n'))

    assert ": name: " in message


def test_a_missing_required_key_is_named(tmp_path: Path) -> None:
    text = REQUIRED.replace('devices_dir = "devices"\n', "")

    message = load_error(write(tmp_path, text))

    assert ": devices_dir: Field required" in message


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = REQUIRED + "anomaly_threshold = 0\ntypo = 1\n"

    message = load_error(write(tmp_path, text))

    assert "anomaly_threshold" in message
    assert "typo" in message


@pytest.mark.parametrize(
    ("lines", "radius"),
    [
        ("", "median"),  # every enrolled device in every round
        ("devices_per_round = 4\n", "model-step"),
        ("participation_rate = 0.2\n", "model-step"),
        ("participation_rate = 1.0\n", "median"),
        ('devices_per_round = 4\n[aggregation_config]\nradius = "median"\n', "median"),
    ],
)
def test_clipping_vr_radius_follows_participation_unless_set(
    tmp_path: Path, lines: str, radius: str
) -> None:
    config = load_coordinator_config(write(tmp_path, REQUIRED + lines))

    assert rule_parameters(config, "clipping-vr")["radius"] == radius
    rule = build("clipping-vr", **rule_parameters(config, "clipping-vr"))
    assert isinstance(rule, ClippingVR)
    assert rule.radius_mode == radius
