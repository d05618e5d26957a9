"""agent.toml: strict keys, paths relative to the file, one-line errors naming the key."""

from __future__ import annotations

from operator import attrgetter
from pathlib import Path

import pytest

from byzedge.daemon.config import ConfigError
from byzedge.edge_agent.config import load_agent_config

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
    assert config.momentum1 == 0.0  # worker momentum off
    assert config.training.epochs == 1
    assert config.data.source == "digits"
    assert config.fault_plan is None


@pytest.mark.parametrize(
    ("lines", "key", "relative"),
    [
        ("", "signing_key", "keys/dev-004.key"),
        ("", "coordinator_key", "keys/coordinator.pub"),
        ("", "state_dir", "state/dev-004"),
        ('fault_plan = "plans/faults.toml"', "fault_plan", "plans/faults.toml"),
        ('[data]\nsource = "npz"\npath = "data/local.npz"', "data.path", "data/local.npz"),
        # The [mqtt] table's paths are daemon.config's (test_daemon_config.py): one of
        # them shows that the loader resolves that table too.
        ('[mqtt]\npassword_file = "keys/pw"', "mqtt.password_file", "keys/pw"),
    ],
)
def test_each_path_key_resolves_against_the_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lines: str, key: str, relative: str
) -> None:
    path = write(tmp_path, REQUIRED + lines + "\n")
    monkeypatch.chdir(tmp_path)

    config = load_agent_config(path)

    assert attrgetter(key)(config) == path.parent.resolve() / relative


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
    assert "dense, float16, natural, qsgd, rand-k, rand-k-q8, top-k, top-k-q8" in message


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
        ("momentum1 = 1.0", "momentum1"),
        ("momentum1 = -0.5", "momentum1"),
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
