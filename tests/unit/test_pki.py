"""daemon/pki.py: the fleet CA, leaf certificates, the CRL, and the checks check-config runs."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from byzedge.daemon import pki
from byzedge.protocol.signing import SigningKey

CA = pki.create_ca("byzedge test CA")
OTHER_CA = pki.create_ca("byzedge test CA")  # same name, other key: a look-alike CA


def _write(folder: Path, issued: pki.Issued, ca: pki.Issued = CA) -> tuple[Path, Path, Path]:
    pki.write_certificate(folder / "ca.crt", ca.certificate)
    pki.write_certificate(folder / "client.crt", issued.certificate)
    pki.write_private_key(folder / "client.key", issued.key)
    return folder / "ca.crt", folder / "client.crt", folder / "client.key"


def _check(folder: Path, cn: str = "dev-000") -> list[str]:
    return pki.check_certificate(
        folder / "client.crt",
        ca_file=folder / "ca.crt",
        key_file=folder / "client.key",
        expected_cn=cn,
    )


def test_a_certificate_issued_by_the_ca_passes(tmp_path: Path) -> None:
    _write(tmp_path, pki.issue_certificate(CA, "dev-000", usage="client"))

    assert _check(tmp_path) == []


def test_a_certificate_from_another_ca_fails_the_chain(tmp_path: Path) -> None:
    _write(tmp_path, pki.issue_certificate(OTHER_CA, "dev-000", usage="client"))

    problems = _check(tmp_path)

    assert len(problems) == 1
    assert "does not chain to ca_file" in problems[0]
    assert "signature does not verify" in problems[0]


def test_a_certificate_from_a_differently_named_ca_names_its_issuer(tmp_path: Path) -> None:
    stranger = pki.create_ca("someone else")
    _write(tmp_path, pki.issue_certificate(stranger, "dev-000", usage="client"))

    (problem,) = _check(tmp_path)

    assert "issued by another CA" in problem
    assert "CN=someone else" in problem


def test_an_expired_certificate_fails(tmp_path: Path) -> None:
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    _write(
        tmp_path, pki.issue_certificate(CA, "dev-000", usage="client", valid_days=2, now=long_ago)
    )

    (problem,) = _check(tmp_path)

    assert problem.startswith(f"cert_file {tmp_path / 'client.crt'}: expired on ")


def test_a_certificate_not_yet_valid_fails(tmp_path: Path) -> None:
    tomorrow = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    _write(tmp_path, pki.issue_certificate(CA, "dev-000", usage="client", now=tomorrow))

    (problem,) = _check(tmp_path)

    assert "not valid before" in problem


def test_an_expired_ca_fails(tmp_path: Path) -> None:
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    old_ca = pki.create_ca("old", valid_days=2, now=long_ago)
    _write(tmp_path, pki.issue_certificate(old_ca, "dev-000", usage="client", now=long_ago), old_ca)

    problems = _check(tmp_path)

    assert any(p.startswith(f"ca_file {tmp_path / 'ca.crt'}: expired") for p in problems)


def test_a_key_that_does_not_match_the_certificate_fails(tmp_path: Path) -> None:
    _write(tmp_path, pki.issue_certificate(CA, "dev-000", usage="client"))
    other = pki.issue_certificate(CA, "dev-000", usage="client")
    pki.write_private_key(tmp_path / "client.key", other.key)

    (problem,) = _check(tmp_path)

    assert problem.startswith(f"key_file {tmp_path / 'client.key'}: does not match cert_file")


def test_a_common_name_other_than_the_account_fails(tmp_path: Path) -> None:
    _write(tmp_path, pki.issue_certificate(CA, "dev-001", usage="client"))

    (problem,) = _check(tmp_path, cn="dev-000")

    assert "common name is 'dev-001', expected 'dev-000'" in problem


def test_a_server_certificate_is_not_a_client_certificate(tmp_path: Path) -> None:
    _write(tmp_path, pki.issue_certificate(CA, "dev-000", usage="server"))

    (problem,) = _check(tmp_path)

    assert "not a TLS client certificate" in problem


@pytest.mark.parametrize("missing", ["ca.crt", "client.crt", "client.key"])
def test_a_missing_file_is_one_problem_naming_it(tmp_path: Path, missing: str) -> None:
    _write(tmp_path, pki.issue_certificate(CA, "dev-000", usage="client"))
    (tmp_path / missing).unlink()

    (problem,) = _check(tmp_path)

    assert f"{tmp_path / missing}: no such file or directory" in problem


def test_garbage_files_are_problems_not_exceptions(tmp_path: Path) -> None:
    for name in ("ca.crt", "client.crt", "client.key"):
        (tmp_path / name).write_text("not pem\n")

    problems = _check(tmp_path)

    assert [p.split(" ", 1)[0] for p in problems] == ["ca_file", "cert_file", "key_file"]


def test_the_ca_may_sign_certificates_and_crls_only() -> None:
    constraints = CA.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    usage = CA.certificate.extensions.get_extension_for_class(x509.KeyUsage).value

    assert constraints.ca
    assert constraints.path_length == 0
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert not usage.digital_signature


def test_keys_are_ecdsa_p256() -> None:
    issued = pki.issue_certificate(CA, "dev-000", usage="client")

    assert isinstance(issued.key, ec.EllipticCurvePrivateKey)
    assert isinstance(issued.key.curve, ec.SECP256R1)


def test_validity_is_ten_years_for_the_ca_and_two_for_leaves() -> None:
    issued = pki.issue_certificate(CA, "dev-000", usage="client")

    assert CA.certificate.not_valid_after_utc - CA.certificate.not_valid_before_utc == (
        dt.timedelta(days=pki.CA_VALID_DAYS)
    )
    lifetime = issued.certificate.not_valid_after_utc - issued.certificate.not_valid_before_utc
    assert lifetime == dt.timedelta(days=pki.LEAF_VALID_DAYS)


def test_a_leaf_never_outlives_its_ca() -> None:
    short_ca = pki.create_ca("short", valid_days=10)

    issued = pki.issue_certificate(short_ca, "dev-000", usage="client")

    assert issued.certificate.not_valid_after_utc == short_ca.certificate.not_valid_after_utc


def test_a_server_certificate_names_its_hosts_as_dns_or_ip() -> None:
    issued = pki.issue_certificate(
        CA, "10.0.0.5", usage="server", hosts=["10.0.0.5", "127.0.0.1", "localhost", "localhost"]
    )

    names = issued.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    usage = issued.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("127.0.0.1"),
    ]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_a_client_certificate_carries_client_auth_and_its_cn() -> None:
    issued = pki.issue_certificate(CA, "coordinator", usage="client")

    usage = issued.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert pki.common_name(issued.certificate) == "coordinator"


def test_the_crl_lists_revoked_serials_and_expires_with_the_ca() -> None:
    issued = pki.issue_certificate(CA, "dev-003", usage="client")
    when = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)

    crl = pki.build_crl(CA, [(issued.certificate.serial_number, when)], number=2)

    assert crl.is_signature_valid(CA.key.public_key())
    revoked = crl.get_revoked_certificate_by_serial_number(issued.certificate.serial_number)
    assert revoked is not None
    assert revoked.revocation_date_utc == when
    assert crl.next_update_utc == CA.certificate.not_valid_after_utc
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2


def test_private_keys_are_written_0600_and_read_back(tmp_path: Path) -> None:
    issued = pki.issue_certificate(CA, "dev-000", usage="client")
    path = tmp_path / "client.key"
    path.write_text("old")
    path.chmod(0o644)

    pki.write_private_key(path, issued.key)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert pki.load_private_key(path).private_numbers() == issued.key.private_numbers()


def test_a_signing_key_matching_its_public_keys_passes(tmp_path: Path) -> None:
    key = SigningKey.generate()
    key.save(tmp_path / "device.key")

    assert (
        pki.check_key_pair(tmp_path / "device.key", [("public key", tmp_path / "device.pub")]) == []
    )


def test_a_signing_key_that_does_not_match_a_public_key_names_both(tmp_path: Path) -> None:
    SigningKey.generate().save(tmp_path / "device.key")
    SigningKey.generate().save(tmp_path / "other.key")

    (problem,) = pki.check_key_pair(
        tmp_path / "device.key", [("enrolment", tmp_path / "other.pub")]
    )

    assert problem.startswith(f"enrolment {tmp_path / 'other.pub'}: key ")
    assert f"does not match signing_key {tmp_path / 'device.key'}" in problem


def test_a_tls_key_is_not_a_signing_key(tmp_path: Path) -> None:
    pki.write_private_key(
        tmp_path / "client.key", pki.issue_certificate(CA, "x", usage="client").key
    )

    (problem,) = pki.check_key_pair(tmp_path / "client.key", [])

    assert "expected an Ed25519 private key" in problem


def test_a_bad_public_key_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "coordinator.pub").write_text("nope")

    key, problems = pki.check_verify_key(tmp_path / "coordinator.pub", "coordinator_key")

    assert key is None
    assert problems == [f"coordinator_key {tmp_path / 'coordinator.pub'}: not a PEM public key"]
