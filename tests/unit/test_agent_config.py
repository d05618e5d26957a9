"""agent.toml: strict keys, paths relative to the file, one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import ConfigError
from edge_agent.config import load_agent_config

REQUIRED = """\
fleet = "plant-7"
device_id = "dev-004"
signing_key = "keys/dev-004.key"
coordinator_key = "keys/coordinator.pub"
state_dir = "state/dev-004"
"""
TABLES = ("data", "training", "eligibility", "mqtt")


def write(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "device"
    folder.mkdir(exist_ok=True)
    path = folder / "agent.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_agent_config(path)
    return str(caught.value)


def test_the_required_keys_alone_give_the_documented_defaults(tmp_path: Path) -> None:
    config = load_agent_config(write(tmp_path, REQUIRED))

    assert config.device_id == "dev-004"
    assert config.compression == "dense"
    assert config.error_feedback
    assert config.training.epochs == 1
    assert config.data.source == "digits"
    assert config.fault_plan is None


def test_relative_paths_resolve_against_the_files_folder_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = REQUIRED + 'fault_plan = "plans/faults.toml"\n'
    path = write(tmp_path, text)
    monkeypatch.chdir(tmp_path)

    config = load_agent_config(path)

    folder = path.parent.resolve()
    assert config.signing_key == folder / "keys" / "dev-004.key"
    assert config.coordinator_key == folder / "keys" / "coordinator.pub"
    assert config.state_dir == folder / "state" / "dev-004"
    assert config.fault_plan == folder / "plans" / "faults.toml"


def test_a_relative_npz_data_path_resolves_against_the_files_folder(tmp_path: Path) -> None:
    text = REQUIRED + '[data]\nsource = "npz"\npath = "data/local.npz"\n'

    config = load_agent_config(write(tmp_path, text))

    assert config.data.path == (tmp_path / "device").resolve() / "data" / "local.npz"


def test_relative_broker_secret_and_tls_paths_resolve_against_the_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = REQUIRED + (
        '[mqtt]\nurl = "mqtts://broker:8883"\nusername = "dev-004"\n'
        'password_file = "keys/broker-password"\n'
        '[mqtt.tls]\nca_file = "certs/ca.pem"\ncert_file = "certs/dev-004.pem"\n'
        'key_file = "certs/dev-004.key"\n'
    )
    path = write(tmp_path, text)
    monkeypatch.chdir(tmp_path)

    config = load_agent_config(path)

    folder = path.parent.resolve()
    assert config.mqtt.password_file == folder / "keys" / "broker-password"
    assert config.mqtt.tls is not None
    assert config.mqtt.tls.ca_file == folder / "certs" / "ca.pem"
    assert config.mqtt.tls.cert_file == folder / "certs" / "dev-004.pem"
    assert config.mqtt.tls.key_file == folder / "certs" / "dev-004.key"


@pytest.mark.parametrize(
    ("lines", "key"),
    [
        ("compresion = 'top-k'", "compresion"),
        *((f"[{table}]\nsurprise = 1", f"{table}.surprise") for table in TABLES),
    ],
)
def test_an_unknown_key_is_rejected_with_its_dotted_path(
    tmp_path: Path, lines: str, key: str
) -> None:
    path = write(tmp_path, REQUIRED + lines + "\n")

    assert load_error(path) == f"{path}: {key}: Extra inputs are not permitted"


def test_an_unknown_compression_is_a_config_error_listing_the_known_codecs(
    tmp_path: Path,
) -> None:
    message = load_error(write(tmp_path, REQUIRED + 'compression = "zip"\n'))

    assert "unknown compression 'zip'" in message
    assert "dense, float16, top-k" in message


def test_a_partition_index_not_below_num_partitions_is_a_config_error(tmp_path: Path) -> None:
    text = REQUIRED + "[data]\nnum_partitions = 4\npartition_index = 4\n"

    message = load_error(write(tmp_path, text))

    assert ": data: " in message
    assert "partition_index 4 >= num_partitions" in message


def test_an_npz_source_without_a_path_is_a_config_error(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, REQUIRED + '[data]\nsource = "npz"\n'))

    assert "data.path is required" in message


@pytest.mark.parametrize(
    ("lines", "key"),
    [
        ("sparsity = 0.0", "sparsity"),
        ("sparsity = 1.5", "sparsity"),
        ("status_interval_s = 0", "status_interval_s"),
        ("[training]\nepochs = 0", "training.epochs"),
        ("[training]\nmomentum = 1.0", "training.momentum"),
        ("[data]\npartition = 'sorted'", "data.partition"),
        ("[data]\nalpha = 0", "data.alpha"),
        ("[eligibility]\nmax_cpu_percent = 150", "eligibility.max_cpu_percent"),
        ("[mqtt]\nmax_message_bytes = 10", "mqtt.max_message_bytes"),
    ],
)
def test_a_bad_value_is_a_config_error_naming_the_key(tmp_path: Path, lines: str, key: str) -> None:
    message = load_error(write(tmp_path, REQUIRED + lines + "\n"))

    assert f": {key}: " in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("device_id", "dev/004"),
        ("fleet", "+"),
        ("device_id", "coordinator"),
        ("device_id", "Monitor"),
    ],
)
def test_an_identifier_that_would_break_topics_is_a_config_error_naming_the_key(
    tmp_path: Path, key: str, value: str
) -> None:
    text = "\n".join(
        f'{key} = "{value}"' if line.startswith(f"{key} =") else line
        for line in REQUIRED.splitlines()
    )

    message = load_error(write(tmp_path, text + "\n"))

    assert f": {key}: " in message


def test_a_missing_required_key_is_named(tmp_path: Path) -> None:
    text = REQUIRED.replace('coordinator_key = "keys/coordinator.pub"\n', "")

    message = load_error(write(tmp_path, text))

    assert ": coordinator_key: Field required" in message


def test_an_override_wins_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, REQUIRED + 'compression = "dense"\n')

    config = load_agent_config(path, {"compression": "float16"})

    assert config.compression == "float16"
