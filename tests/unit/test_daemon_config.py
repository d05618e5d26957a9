"""Config plumbing every process shares: TOML, relative paths, one-line errors, strict models.

The loaders' own tests (test_agent_config.py, test_coordinator_config.py) check only which
keys each loader resolves; how a path is resolved is tested here, once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from byzedge.daemon.config import (
    ConfigError,
    StrictModel,
    checked_device_id,
    checked_identifier,
    format_validation_error,
    read_toml,
    resolve_mqtt_paths,
    resolve_paths,
)


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config folder, with the working directory elsewhere."""
    config_folder = tmp_path / "fleet"
    config_folder.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return config_folder


def test_a_relative_path_resolves_against_the_folder_not_the_cwd(folder: Path) -> None:
    table: dict[str, Any] = {"state_dir": "state/dev-1"}

    resolve_paths(table, ("state_dir",), folder)

    assert table["state_dir"] == str(folder.resolve() / "state" / "dev-1")


def test_an_absolute_path_is_kept(folder: Path, tmp_path: Path) -> None:
    absolute = tmp_path / "abs" / "state"
    table: dict[str, Any] = {"state_dir": str(absolute)}

    resolve_paths(table, ("state_dir",), folder)

    assert table["state_dir"] == str(absolute)


def test_only_the_named_string_values_are_resolved(folder: Path) -> None:
    table: dict[str, Any] = {"name": "dev-1", "rounds": 3, "state_dir": None}

    resolve_paths(table, ("rounds", "state_dir", "absent"), folder)

    assert table == {"name": "dev-1", "rounds": 3, "state_dir": None}


def test_the_mqtt_secret_and_tls_files_resolve_against_the_folder(folder: Path) -> None:
    raw: dict[str, Any] = {
        "mqtt": {
            "url": "mqtts://broker:8883",
            "username": "dev-1",
            "password_file": "keys/broker-password",
            "tls": {"ca_file": "certs/ca.pem", "cert_file": "certs/c.pem", "key_file": "c.key"},
        }
    }

    resolve_mqtt_paths(raw, folder)

    root = folder.resolve()
    assert raw["mqtt"]["url"] == "mqtts://broker:8883"
    assert raw["mqtt"]["username"] == "dev-1"
    assert raw["mqtt"]["password_file"] == str(root / "keys" / "broker-password")
    assert raw["mqtt"]["tls"] == {
        "ca_file": str(root / "certs" / "ca.pem"),
        "cert_file": str(root / "certs" / "c.pem"),
        "key_file": str(root / "c.key"),
    }


@pytest.mark.parametrize("raw", [{}, {"mqtt": "not a table"}, {"mqtt": {"tls": 3}}])
def test_without_mqtt_tables_nothing_is_resolved(folder: Path, raw: dict[str, Any]) -> None:
    before = repr(raw)

    resolve_mqtt_paths(raw, folder)

    assert repr(raw) == before


def test_read_toml_parses_a_file(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text('fleet = "plant-7"\n[mqtt]\nport = 1\n', encoding="utf-8")

    assert read_toml(path) == {"fleet": "plant-7", "mqtt": {"port": 1}}


def test_invalid_toml_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("rounds = = 3\n", encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        read_toml(path)

    assert str(caught.value).startswith(f"{path}: ")


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"

    with pytest.raises(ConfigError, match="no such file"):
        read_toml(path)


class _Inner(StrictModel):
    epochs: int = 1


class _Outer(StrictModel):
    rounds: int = 1
    training: _Inner = _Inner()


def _validation_error(raw: dict[str, Any]) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        _Outer.model_validate(raw)
    return caught.value


def test_every_problem_is_one_line_naming_the_file_and_the_dotted_key() -> None:
    error = _validation_error({"rounds": "ten", "training": {"epochs": 1, "surprise": 1}})

    lines = format_validation_error(Path("fleet.toml"), error).split("; ")

    assert len(lines) == 2
    assert lines[0].startswith("fleet.toml: rounds: ")
    assert lines[1] == "fleet.toml: training.surprise: Extra inputs are not permitted"


def test_a_strict_model_is_frozen() -> None:
    model = _Outer()

    with pytest.raises(ValidationError, match="frozen"):
        model.rounds = 2  # type: ignore[misc]


@pytest.mark.parametrize("value", ["plant/7", "+", ""])
def test_a_bad_identifier_is_a_value_error_for_pydantic(value: str) -> None:
    with pytest.raises(ValueError, match="fleet"):
        checked_identifier(value, "fleet")


def test_a_reserved_device_id_is_a_value_error_for_pydantic() -> None:
    with pytest.raises(ValueError, match="coordinator"):
        checked_device_id("coordinator")
