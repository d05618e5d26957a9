"""``byzedge init``: the fleet folder it writes, and ``init add-device | revoke-device``."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from byzedge import provisioning
from byzedge.cli import main
from byzedge.coordinator.config import load_coordinator_config
from byzedge.daemon import pki
from byzedge.daemon.mqtt import MqttSettings
from byzedge.edge_agent.config import load_agent_config
from byzedge.protocol.signing import SigningKey, VerifyKey

REPO = Path(__file__).resolve().parents[2]
DEVICES = ("dev-000", "dev-001")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _init(folder: Path, *extra: str) -> int:
    return main(["init", str(folder), "--fleet", "plant-7", "--devices", "2", *extra])


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    folder = tmp_path / "fleet"
    assert _init(folder, "--host", "broker.example", "--port", "18883") == 0
    return folder


def _rules(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_init_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["init", "--help"])

    assert exit_info.value.code == 0
    assert "add-device" in capsys.readouterr().out


def test_init_writes_the_documented_layout(fleet: Path) -> None:
    expected = [
        "fleet.toml",
        "ca/ca.crt",
        "ca/ca.key",
        "ca/revoked.txt",
        "broker/mosquitto.conf",
        "broker/acl",
        "broker/ca.crt",
        "broker/server.crt",
        "broker/server.key",
        "broker/crl.pem",
        "coordinator/coordinator.toml",
        "coordinator/coordinator.key",
        "coordinator/coordinator.pub",
        "coordinator/tls/client.crt",
        "monitor/monitor.toml",
        "monitor/tls/client.key",
        "systemd/byzedge-agent.service",
        "systemd/byzedge-coordinator.service",
    ]
    for device in DEVICES:
        expected += [
            f"devices/{device}.pub",
            f"agents/{device}/agent.toml",
            f"agents/{device}/device.key",
            f"agents/{device}/device.pub",
            f"agents/{device}/coordinator.pub",
            f"agents/{device}/tls/ca.crt",
            f"agents/{device}/tls/client.crt",
            f"agents/{device}/tls/client.key",
        ]

    assert [name for name in expected if not (fleet / name).is_file()] == []
    assert (fleet / "broker" / "data").is_dir()
    assert (fleet / "broker" / "log").is_dir()


def test_every_private_key_is_0600_and_the_ca_folder_0700(fleet: Path) -> None:
    keys = sorted(fleet.rglob("*.key"))

    assert len(keys) == 5 + 2 * len(DEVICES)  # CA, broker, coordinator x2, monitor; 2 each
    assert {path.relative_to(fleet).as_posix(): _mode(path) for path in keys} == {
        path.relative_to(fleet).as_posix(): 0o600 for path in keys
    }
    assert _mode(fleet / "ca") == 0o700


def test_init_prints_no_private_key(fleet: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert _init(fleet.parent / "again") == 0

    captured = capsys.readouterr()
    assert "PRIVATE KEY" not in captured.out + captured.err
    assert "mosquitto -c " in captured.out
    assert "byzedge coordinator run --config " in captured.out
    assert "byzedge agent run --config " in captured.out
    assert "byzedge monitor --config " in captured.out


def test_the_coordinator_config_passes_check_config(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = fleet / "coordinator" / "coordinator.toml"

    assert main(["coordinator", "check-config", "--config", str(config)]) == 0
    assert "2 enrolled devices" in capsys.readouterr().out


@pytest.mark.parametrize("device", DEVICES)
def test_every_agent_config_passes_check_config(fleet: Path, device: str) -> None:
    config = fleet / "agents" / device / "agent.toml"

    code = main(
        ["agent", "check-config", "--config", str(config), "--enrolment", str(fleet / "devices")]
    )

    assert code == 0


def test_the_coordinator_config_says_what_init_was_asked(fleet: Path) -> None:
    config = load_coordinator_config(fleet / "coordinator" / "coordinator.toml")

    assert config.fleet == "plant-7"
    assert config.mqtt.url == "mqtts://broker.example:18883"
    assert config.devices_dir == fleet.resolve() / "devices"
    assert config.state_dir == fleet.resolve() / "coordinator" / "state"
    assert config.byzantine_defense == "clipping-vr"
    assert config.metrics.enabled
    assert config.mqtt.tls is not None
    assert config.mqtt.tls.cert_file == fleet.resolve() / "coordinator" / "tls" / "client.crt"


def test_the_byzantine_defense_flag_reaches_the_coordinator(tmp_path: Path) -> None:
    assert _init(tmp_path / "f", "--byzantine-defense", "trimmed-mean") == 0

    config = load_coordinator_config(tmp_path / "f" / "coordinator" / "coordinator.toml")
    assert config.byzantine_defense == "trimmed-mean"


def test_an_unknown_defense_is_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _init(tmp_path / "f", "--byzantine-defense", "magic") == 2

    err = capsys.readouterr().err
    assert err.startswith("byzedge init: --byzantine-defense 'magic': unknown rule; known: ")
    assert "clipping-vr" in err
    assert not (tmp_path / "f").exists()


def test_device_k_trains_on_shard_k_of_n(fleet: Path) -> None:
    for index, device in enumerate(DEVICES):
        config = load_agent_config(fleet / "agents" / device / "agent.toml")

        assert config.device_id == device
        assert (config.data.partition_index, config.data.num_partitions) == (index, len(DEVICES))
        assert config.state_dir == fleet.resolve() / "agents" / device / "state"


def test_each_account_has_a_certificate_with_its_own_cn(fleet: Path) -> None:
    accounts = {"coordinator": fleet / "coordinator", "monitor": fleet / "monitor"}
    accounts |= {device: fleet / "agents" / device for device in DEVICES}

    for account, folder in accounts.items():
        tls = folder / "tls"
        problems = pki.check_certificate(
            tls / "client.crt",
            ca_file=tls / "ca.crt",
            key_file=tls / "client.key",
            expected_cn=account,
        )
        assert problems == [], account


def test_the_broker_certificate_covers_host_loopback_and_localhost(fleet: Path) -> None:
    certificate = pki.load_certificate(fleet / "broker" / "server.crt")

    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["broker.example", "localhost"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    problems = pki.check_certificate(
        fleet / "broker" / "server.crt",
        ca_file=fleet / "broker" / "ca.crt",
        key_file=fleet / "broker" / "server.key",
        expected_cn="broker.example",
        usage="server",
    )
    assert problems == []


def test_an_ip_host_is_an_ip_san_and_the_listener_binds_it(tmp_path: Path) -> None:
    assert _init(tmp_path / "f", "--host", "10.1.2.3") == 0

    certificate = pki.load_certificate(tmp_path / "f" / "broker" / "server.crt")
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == [
        "10.1.2.3",
        "127.0.0.1",
    ]
    conf = (tmp_path / "f" / "broker" / "mosquitto.conf").read_text()
    assert "\nlistener 8883 10.1.2.3\n" in conf


def test_the_signing_keys_are_enrolled(fleet: Path) -> None:
    for device in DEVICES:
        key = SigningKey.load(fleet / "agents" / device / "device.key")

        assert VerifyKey.load(fleet / "devices" / f"{device}.pub") == key.verify_key
    coordinator = SigningKey.load(fleet / "coordinator" / "coordinator.key")
    for copy in (fleet / "agents" / "dev-000", fleet / "monitor"):
        assert VerifyKey.load(copy / "coordinator.pub") == coordinator.verify_key


def test_the_monitor_config_has_the_agreed_schema(fleet: Path) -> None:
    path = fleet / "monitor" / "monitor.toml"
    raw = tomllib.loads(path.read_text())

    assert set(raw) == {"fleet", "coordinator_key", "mqtt"}
    assert raw["fleet"] == "plant-7"
    assert (path.parent / raw["coordinator_key"]).is_file()
    agent = tomllib.loads((fleet / "agents" / "dev-000" / "agent.toml").read_text())
    assert raw["mqtt"].keys() == agent["mqtt"].keys()
    assert raw["mqtt"]["tls"].keys() == agent["mqtt"]["tls"].keys()
    MqttSettings.model_validate(raw["mqtt"])


def test_the_broker_config_requires_client_certificates(fleet: Path) -> None:
    conf = (fleet / "broker" / "mosquitto.conf").read_text()
    broker = fleet.resolve() / "broker"
    deploy = (REPO / "deploy" / "mosquitto" / "byzedge.conf").read_text()

    for line in (
        "allow_anonymous false",
        "listener 18883",
        "require_certificate true",
        "use_identity_as_username true",
        f"acl_file {broker / 'acl'}",
        f"keyfile {broker / 'server.key'}",
        f"crlfile {broker / 'crl.pem'}",
        f"persistence_location {broker / 'data'}/",
        f"log_dest file {broker / 'log' / 'mosquitto.log'}",
    ):
        assert f"\n{line}\n" in conf, line
    packet_size = next(line for line in _rules(deploy) if line.startswith("max_packet_size"))
    assert f"\n{packet_size}\n" in conf


def test_the_broker_acl_has_the_same_rules_as_the_deploy_acl(fleet: Path) -> None:
    deploy = (REPO / "deploy" / "mosquitto" / "acl").read_text()

    assert _rules((fleet / "broker" / "acl").read_text()) == _rules(deploy)


def test_the_systemd_units_are_the_ones_in_deploy(fleet: Path) -> None:
    for name in ("byzedge-agent.service", "byzedge-coordinator.service"):
        assert (fleet / "systemd" / name).read_text() == (
            REPO / "deploy" / "systemd" / name
        ).read_text()


@pytest.mark.parametrize(
    ("unit", "key"),
    [("byzedge-agent.service", "device.key"), ("byzedge-coordinator.service", "coordinator.key")],
)
def test_the_units_pass_run_time_paths_from_systemd(unit: str, key: str) -> None:
    text = getattr(provisioning, unit.removeprefix("byzedge-").replace(".service", "_unit"))()

    assert "--state-dir ${STATE_DIRECTORY}" in text
    assert f"--signing-key ${{CREDENTIALS_DIRECTORY}}/{key}" in text
    assert "--tls-key ${CREDENTIALS_DIRECTORY}/mqtt.key" in text
    assert f"\nLoadCredential={key}:" in text
    assert "\nLoadCredential=mqtt.key:" in text
    for hardening in (
        "ProtectSystem=strict",
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "UMask=0077",
    ):
        assert f"\n{hardening}\n" in text


def test_init_refuses_a_non_empty_folder_without_force(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (fleet / "ca" / "ca.crt").read_bytes()

    assert _init(fleet) == 2
    assert "is not empty; pass --force" in capsys.readouterr().err
    assert (fleet / "ca" / "ca.crt").read_bytes() == before
    assert _init(fleet, "--force") == 0
    assert (fleet / "ca" / "ca.crt").read_bytes() != before


def test_the_fleet_folder_can_be_moved(fleet: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere"
    shutil.move(fleet, moved)

    assert (
        main(
            [
                "coordinator",
                "check-config",
                "--config",
                str(moved / "coordinator" / "coordinator.toml"),
            ]
        )
        == 0
    )
    assert (
        main(
            ["agent", "check-config", "--config", str(moved / "agents" / "dev-001" / "agent.toml")]
        )
        == 0
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files to the broker's user")
def test_as_root_the_broker_key_and_folders_belong_to_mosquitto(fleet: Path) -> None:
    try:
        broker_uid = pwd.getpwnam("mosquitto").pw_uid
    except KeyError:
        pytest.skip("no mosquitto user")
    broker = fleet / "broker"

    for path in (broker, broker / "server.key", broker / "data", broker / "log"):
        assert path.stat().st_uid == broker_uid, path
    assert _mode(broker / "server.key") == 0o600
    assert (fleet / "ca" / "ca.key").stat().st_uid == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="as another user mosquitto runs as that user")
def test_a_parent_the_broker_cannot_enter_is_one_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        pwd.getpwnam("mosquitto")
    except KeyError:
        pytest.skip("no mosquitto user")
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)

    assert _init(closed / "f") == 0

    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1
    assert "user mosquitto cannot enter " in warnings[0]
    assert str(closed) in warnings[0].split("cannot enter ", 1)[1].split(",", 1)[0].split()
    assert "chmod o+x " in warnings[0]


def test_add_device_provisions_the_next_device_and_enrols_it(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", "add-device", str(fleet)]) == 0

    assert "dev-002: added" in capsys.readouterr().out
    assert (fleet / "devices" / "dev-002.pub").is_file()
    assert _mode(fleet / "agents" / "dev-002" / "tls" / "client.key") == 0o600
    config = fleet / "agents" / "dev-002" / "agent.toml"
    assert (
        main(
            [
                "agent",
                "check-config",
                "--config",
                str(config),
                "--enrolment",
                str(fleet / "devices"),
            ]
        )
        == 0
    )
    agent = load_agent_config(config)
    assert (agent.data.partition_index, agent.data.num_partitions) == (2, 3)


def test_add_device_takes_a_chosen_id(fleet: Path) -> None:
    assert main(["init", "add-device", str(fleet), "--device-id", "pump-7"]) == 0

    config = fleet / "agents" / "pump-7" / "agent.toml"
    assert main(["agent", "check-config", "--config", str(config)]) == 0
    assert (
        main(
            [
                "coordinator",
                "check-config",
                "--config",
                str(fleet / "coordinator" / "coordinator.toml"),
            ]
        )
        == 0
    )


@pytest.mark.parametrize(
    ("device_id", "message"),
    [
        ("dev-001", "dev-001 is taken"),
        ("broker", "broker is taken"),
        ("coordinator", "reserved"),
        ("bad/id", "invalid device id"),
    ],
)
def test_add_device_refuses_a_taken_or_invalid_id(
    fleet: Path, capsys: pytest.CaptureFixture[str], device_id: str, message: str
) -> None:
    assert main(["init", "add-device", str(fleet), "--device-id", device_id]) == 2

    assert message in capsys.readouterr().err


def test_add_device_needs_a_fleet_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", "add-device", str(tmp_path)]) == 2

    assert "is not a fleet folder" in capsys.readouterr().err


def test_revoke_device_drops_the_enrolment_and_lists_the_certificate(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    serial = pki.load_certificate(fleet / "agents" / "dev-001" / "tls" / "client.crt").serial_number

    assert main(["init", "revoke-device", str(fleet), "dev-001"]) == 0

    out = capsys.readouterr().out
    assert "mosquitto reads the CRL only when it starts or reloads" in out
    assert not (fleet / "devices" / "dev-001.pub").exists()
    assert f"{serial:x} dev-001 " in (fleet / "ca" / "revoked.txt").read_text()
    crl = x509.load_pem_x509_crl((fleet / "broker" / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    ca_key = pki.load_certificate(fleet / "ca" / "ca.crt").public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    assert crl.is_signature_valid(ca_key)


def test_a_revoked_device_fails_check_config_against_the_enrolment(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", "revoke-device", str(fleet), "dev-001"]) == 0
    capsys.readouterr()
    config = fleet / "agents" / "dev-001" / "agent.toml"

    assert (
        main(
            [
                "agent",
                "check-config",
                "--config",
                str(config),
                "--enrolment",
                str(fleet / "devices"),
            ]
        )
        == 2
    )
    assert "dev-001 is not enrolled, or was revoked" in capsys.readouterr().err
    assert (
        main(
            [
                "coordinator",
                "check-config",
                "--config",
                str(fleet / "coordinator" / "coordinator.toml"),
            ]
        )
        == 0
    )
    assert "1 enrolled devices" in capsys.readouterr().out


def test_revoking_twice_or_an_unknown_device_is_refused(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", "revoke-device", str(fleet), "dev-000"]) == 0

    assert main(["init", "revoke-device", str(fleet), "dev-000"]) == 2
    assert "dev-000 is already revoked" in capsys.readouterr().err
    assert main(["init", "revoke-device", str(fleet), "dev-009"]) == 2
    assert "no device dev-009" in capsys.readouterr().err


def test_a_revoked_id_is_not_handed_out_again(fleet: Path) -> None:
    assert main(["init", "revoke-device", str(fleet), "dev-001"]) == 0
    shutil.rmtree(fleet / "agents" / "dev-001")

    assert provisioning.next_device_id(fleet) == "dev-002"
    assert main(["init", "add-device", str(fleet), "--device-id", "dev-001"]) == 2


def test_force_replaces_only_what_init_writes(fleet: Path) -> None:
    keep = fleet / "notes.txt"
    keep.write_text("mine\n")

    assert _init(fleet, "--force") == 0

    assert keep.read_text() == "mine\n"


def test_each_revocation_grows_the_crl_number(fleet: Path) -> None:
    numbers = []
    for device in DEVICES:
        assert main(["init", "revoke-device", str(fleet), device]) == 0
        crl = x509.load_pem_x509_crl((fleet / "broker" / "crl.pem").read_bytes())
        numbers.append(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)

    assert numbers == [2, 3]
