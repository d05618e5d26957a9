"""``check-config`` (and the start of ``run``) catch what would break at run time.

Each test breaks one file of a fleet made by ``byzedge init`` and expects exit code 2 with
one line naming that file, never a traceback.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from byzedge.cli import main
from byzedge.commands.coordinator import mirror_problems
from byzedge.protocol.signing import SigningKey


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pristine") / "fleet"
    assert main(["init", str(folder), "--fleet", "checks", "--devices", "2"]) == 0
    return folder


@pytest.fixture
def fleet(pristine: Path, tmp_path: Path) -> Path:
    """A private copy of the fleet, free to break."""
    return Path(shutil.copytree(pristine, tmp_path / "fleet", symlinks=True))


def _agent(fleet: Path, *extra: str, action: str = "check-config") -> int:
    config = fleet / "agents" / "dev-000" / "agent.toml"
    return main(["agent", action, "--config", str(config), *extra])


def _coordinator(fleet: Path, *extra: str, action: str = "check-config") -> int:
    config = fleet / "coordinator" / "coordinator.toml"
    return main(["coordinator", action, "--config", str(config), *extra])


def _errors(capsys: pytest.CaptureFixture[str]) -> list[str]:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return captured.err.splitlines()


def test_a_missing_certificate_is_one_line_naming_it(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert = fleet / "agents" / "dev-000" / "tls" / "client.crt"
    cert.unlink()

    assert _agent(fleet) == 2
    assert _errors(capsys) == [
        f"byzedge agent: mqtt.tls.cert_file {cert}: no such file or directory"
    ]


def test_a_missing_certificate_stops_agent_run_before_it_starts(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert = fleet / "agents" / "dev-000" / "tls" / "client.crt"
    cert.unlink()

    assert _agent(fleet, action="run") == 2
    assert _errors(capsys) == [
        f"byzedge agent: mqtt.tls.cert_file {cert}: no such file or directory"
    ]


def test_a_missing_certificate_stops_coordinator_run_before_it_starts(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert = fleet / "coordinator" / "tls" / "client.crt"
    cert.unlink()

    assert _coordinator(fleet, action="run") == 2
    assert _errors(capsys) == [
        f"byzedge coordinator: mqtt.tls.cert_file {cert}: no such file or directory"
    ]


def test_another_devices_certificate_is_refused(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("client.crt", "client.key"):
        shutil.copy(
            fleet / "agents" / "dev-001" / "tls" / name, fleet / "agents" / "dev-000" / "tls"
        )

    assert _agent(fleet) == 2
    (line,) = _errors(capsys)
    assert "client.crt: common name is 'dev-001', expected 'dev-000'" in line


def test_a_device_certificate_is_not_the_coordinators(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("client.crt", "client.key"):
        shutil.copy(fleet / "agents" / "dev-000" / "tls" / name, fleet / "coordinator" / "tls")

    assert _coordinator(fleet) == 2
    (line,) = _errors(capsys)
    assert "common name is 'dev-000', expected 'coordinator'" in line


def test_a_certificate_without_its_key_is_refused(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tls = fleet / "agents" / "dev-000" / "tls"
    shutil.copy(fleet / "agents" / "dev-001" / "tls" / "client.key", tls / "client.key")

    assert _agent(fleet) == 2
    (line,) = _errors(capsys)
    assert f"mqtt.tls.key_file {tls / 'client.key'}: does not match cert_file" in line


def test_a_missing_ca_is_one_line_naming_it(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = fleet / "coordinator" / "tls" / "ca.crt"
    ca.unlink()

    assert _coordinator(fleet) == 2
    assert _errors(capsys) == [
        f"byzedge coordinator: mqtt.tls.ca_file {ca}: no such file or directory"
    ]


def test_a_certificate_of_another_fleet_does_not_chain(
    fleet: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other"
    assert main(["init", str(other), "--fleet", "other", "--devices", "1"]) == 0
    for name in ("client.crt", "client.key"):
        shutil.copy(
            other / "agents" / "dev-000" / "tls" / name, fleet / "agents" / "dev-000" / "tls"
        )
    capsys.readouterr()

    assert _agent(fleet) == 2
    (line,) = _errors(capsys)
    assert "client.crt: does not chain to ca_file" in line


def test_a_signing_key_that_does_not_match_its_public_key_is_refused(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = fleet / "agents" / "dev-000"
    (folder / "device.key").write_bytes(SigningKey.generate().to_pem())

    assert _agent(fleet) == 2
    (line,) = _errors(capsys)
    assert line.startswith(f"byzedge agent: public key {folder / 'device.pub'}: key ")
    assert f"does not match signing_key {folder / 'device.key'}" in line


def test_a_signing_key_that_is_not_enrolled_is_refused(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    enrolled = fleet / "devices" / "dev-000.pub"
    enrolled.write_bytes((fleet / "devices" / "dev-001.pub").read_bytes())

    assert _agent(fleet) == 0  # without --enrolment there is nothing to compare with
    assert _agent(fleet, "--enrolment", str(fleet / "devices")) == 2
    (line,) = _errors(capsys)
    assert line.startswith(f"byzedge agent: enrolment {enrolled}: key ")


def test_a_missing_signing_key_names_it(fleet: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = fleet / "coordinator" / "coordinator.key"
    key.unlink()

    assert _coordinator(fleet) == 2
    assert _errors(capsys) == [f"byzedge coordinator: signing_key {key}: no such file or directory"]


def test_a_bad_coordinator_key_is_refused(fleet: Path, capsys: pytest.CaptureFixture[str]) -> None:
    public = fleet / "agents" / "dev-000" / "coordinator.pub"
    public.write_text("garbage\n")

    assert _agent(fleet) == 2
    assert _errors(capsys) == [f"byzedge agent: coordinator_key {public}: not a PEM public key"]


def test_a_bad_enrolment_file_fails_check_config(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = fleet / "devices" / "dev-007.pub"
    bad.write_text("garbage\n")
    reserved = fleet / "devices" / "monitor.pub"
    shutil.copy(fleet / "devices" / "dev-000.pub", reserved)

    assert _coordinator(fleet) == 2
    lines = _errors(capsys)
    assert len(lines) == 2
    assert f"devices_dir {bad}: not a PEM public key" in lines[0]
    assert f"devices_dir {reserved}: invalid device id 'monitor'" in lines[1]


def test_a_state_dir_that_cannot_be_created_is_refused(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = fleet / "agents" / "dev-000" / "state"
    blocker.write_text("a file where the state folder should be\n")

    assert _agent(fleet) == 2
    assert _errors(capsys) == [f"byzedge agent: state_dir {blocker}: not a folder"]


def test_run_time_flags_override_the_file(
    fleet: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # What systemd does: the keys come from the credentials folder, the state elsewhere.
    folder = fleet / "agents" / "dev-000"
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    shutil.move(folder / "device.key", credentials / "device.key")
    shutil.move(folder / "tls" / "client.key", credentials / "mqtt.key")
    (folder / "state").write_text("not a folder\n")
    assert _agent(fleet) == 2
    capsys.readouterr()

    code = _agent(
        fleet,
        "--state-dir",
        str(tmp_path / "state"),
        "--signing-key",
        str(credentials / "device.key"),
        "--tls-key",
        str(credentials / "mqtt.key"),
        "--enrolment",
        str(fleet / "devices"),
    )

    assert code == 0, capsys.readouterr().err


def test_the_coordinator_takes_the_run_time_flags_too(
    fleet: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = fleet / "coordinator"
    shutil.move(folder / "coordinator.key", tmp_path / "coordinator.key")
    shutil.move(folder / "tls" / "client.key", tmp_path / "mqtt.key")
    flags = ["--state-dir", str(tmp_path / "state"), "--tls-key", str(tmp_path / "mqtt.key")]

    assert _coordinator(fleet, *flags, "--signing-key", str(tmp_path / "coordinator.key")) == 0
    assert _coordinator(fleet, *flags, "--signing-key", str(tmp_path / "absent.key")) == 2
    assert _errors(capsys)[-1] == (
        f"byzedge coordinator: signing_key {tmp_path / 'absent.key'}: no such file or directory"
    )


def test_tls_key_without_a_tls_table_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    SigningKey.generate().save(tmp_path / "coordinator.key")
    (tmp_path / "devices").mkdir()
    config = tmp_path / "coordinator.toml"
    config.write_text(
        'fleet = "f"\nsigning_key = "coordinator.key"\ndevices_dir = "devices"\n'
        'state_dir = "state"\n'
    )

    code = main(["coordinator", "check-config", "--config", str(config), "--tls-key", "x.key"])

    assert code == 2
    assert _errors(capsys) == [
        "byzedge coordinator: --tls-key was given but the config has no [mqtt.tls] table"
    ]


def test_mirrors_of_a_million_devices_that_do_not_fit_are_a_problem() -> None:
    gib = 1 << 30
    # EF21 at 10^6 devices and mlp's 4,810 parameters: 19.2 GB of mirrors on a 24 GiB host.
    problems = mirror_problems("byz-ef21", 1_000_000, 4_810, 24 * gib)
    assert len(problems) == 1
    assert "19.2 GB" in problems[0]
    assert "byz-vr-marina" in problems[0]
    # The same fleet fits at 10^4 devices; methods without mirrors never need them.
    assert mirror_problems("byz-ef21", 10_000, 4_810, 24 * gib) == []
    assert mirror_problems("byz-dasha-page", 1_000_000, 4_810, 24 * gib) != []
    assert mirror_problems("byz-vr-marina", 1_000_000, 4_810, 24 * gib) == []
    assert mirror_problems("fedavg", 1_000_000, 4_810, 24 * gib) == []
