"""``byzedge init --workers K``: a fleet folder whose coordinator has K ingest workers."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from byzedge import provisioning
from byzedge.cli import main
from byzedge.commands._cluster import WORKER_ACCOUNT, worker_mqtt
from byzedge.coordinator.config import load_coordinator_config
from byzedge.daemon import pki

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    folder = tmp_path / "fleet"
    assert main(["init", str(folder), "--fleet", "p", "--devices", "1", "--workers", "3"]) == 0
    return folder


def test_the_coordinator_gets_a_cluster_table_it_loads(fleet: Path) -> None:
    config = load_coordinator_config(fleet / "coordinator" / "coordinator.toml")

    assert config.cluster.workers == 3
    assert config.max_update_bytes <= config.mqtt.max_message_bytes
    settings = worker_mqtt(config, None)
    assert settings.tls is not None
    assert settings.tls.cert_file == fleet / "coordinator" / "ingest" / "tls" / "client.crt"


def test_the_workers_certificate_is_the_ingest_account(fleet: Path) -> None:
    tls = fleet / "coordinator" / "ingest" / "tls"
    certificate = x509.load_pem_x509_certificate((tls / "client.crt").read_bytes())

    names = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    assert [name.value for name in names] == [WORKER_ACCOUNT]
    problems = pki.check_certificate(
        tls / "client.crt",
        ca_file=tls / "ca.crt",
        key_file=tls / "client.key",
        expected_cn=WORKER_ACCOUNT,
    )
    assert problems == []


def test_the_template_unit_is_the_one_in_deploy(fleet: Path) -> None:
    unit = (fleet / "systemd" / "byzedge-ingest@.service").read_text()

    assert unit == (REPO / "deploy" / "systemd" / "byzedge-ingest@.service").read_text()
    assert unit == provisioning.ingest_unit()
    assert "--worker %i" in unit


def test_without_workers_nothing_of_it_is_written(tmp_path: Path) -> None:
    folder = tmp_path / "fleet"
    assert main(["init", str(folder), "--fleet", "p", "--devices", "1"]) == 0

    assert not (folder / "coordinator" / "ingest").exists()
    assert not (folder / "systemd" / "byzedge-ingest@.service").exists()
    assert load_coordinator_config(folder / "coordinator" / "coordinator.toml").cluster.workers == 0


def test_too_many_workers_are_refused(tmp_path: Path) -> None:
    argv = ["init", str(tmp_path / "f"), "--fleet", "p", "--devices", "1", "--workers", "65"]
    assert main(argv) == 2


def test_ingest_is_no_device_id(fleet: Path) -> None:
    with pytest.raises(provisioning.ProvisioningError, match="reserved"):
        provisioning.add_device(fleet, "ingest")
