"""The fleet's X.509 PKI: generation (``byzedge init``) and the checks ``check-config`` runs.

Key type: **ECDSA P-256** for every TLS key (CA, broker, clients). Mosquitto 2.0 on
OpenSSL 3, Python's :mod:`ssl`, paho, AWS IoT Core and the secure elements / TPMs a device
may keep its key in (ATECC608-class parts, TPM 2.0) all do P-256; Ed25519 certificates are
not accepted by TPMs and several TLS stacks. The Ed25519 keys of :mod:`byzedge.protocol.signing`
sign updates and models; they are not TLS keys.

Validity: the CA 10 years (:data:`CA_VALID_DAYS`), leaf certificates 2 years
(:data:`LEAF_VALID_DAYS`), both starting one hour in the past so a device whose clock lags
a little still accepts them. The CRL's next update is the CA's expiry: OpenSSL refuses
*every* client once a CRL has expired, and a fleet must not lock itself out because nobody
re-signed an unchanged list.

Generation functions raise on misuse (programming errors); the ``check_*`` functions never
raise on bad files: they return a list of one-line problems, each naming the file.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from byzedge.protocol.errors import ProtocolError
from byzedge.protocol.signing import SigningKey, VerifyKey

__all__ = [
    "CA_VALID_DAYS",
    "LEAF_VALID_DAYS",
    "Issued",
    "Usage",
    "build_crl",
    "check_certificate",
    "check_key_pair",
    "check_readable",
    "check_verify_key",
    "common_name",
    "create_ca",
    "issue_certificate",
    "load_certificate",
    "load_private_key",
    "write_certificate",
    "write_crl",
    "write_private_key",
]

CA_VALID_DAYS = 3650
"""Validity of the fleet CA (10 years): re-issuing it means touching every device."""

LEAF_VALID_DAYS = 730
"""Validity of broker and client certificates (2 years)."""

_BACKDATE = dt.timedelta(hours=1)

Usage = Literal["client", "server"]

_PURPOSE = {"client": ExtendedKeyUsageOID.CLIENT_AUTH, "server": ExtendedKeyUsageOID.SERVER_AUTH}


@dataclass(frozen=True)
class Issued:
    """A private key and the certificate issued for it."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate


def _now(now: dt.datetime | None) -> dt.datetime:
    return now if now is not None else dt.datetime.now(dt.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def create_ca(
    name: str, *, valid_days: int = CA_VALID_DAYS, now: dt.datetime | None = None
) -> Issued:
    """Create a self-signed CA that may sign leaf certificates and CRLs only.

    Parameters
    ----------
    name:
        The CA's common name, e.g. ``"byzedge fleet-a CA"``.
    valid_days:
        Validity from (an hour before) ``now``.
    now:
        The issuing time; the current UTC time by default (tests pass their own).
    """
    start = _now(now) - _BACKDATE
    key = _new_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "byzedge"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(key, certificate)


def _alt_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def issue_certificate(
    ca: Issued,
    name: str,
    *,
    usage: Usage,
    hosts: Sequence[str] = (),
    valid_days: int = LEAF_VALID_DAYS,
    now: dt.datetime | None = None,
) -> Issued:
    """Issue a leaf certificate (with a fresh P-256 key) signed by ``ca``.

    Parameters
    ----------
    ca:
        The issuing CA.
    name:
        The subject's common name: the MQTT user name of a client (the broker maps it with
        ``use_identity_as_username``), the host name of a server.
    usage:
        ``"client"`` (extended key usage clientAuth) or ``"server"`` (serverAuth).
    hosts:
        Subject alternative names (DNS names or IP addresses); what a client checks the
        broker's host name against. Duplicates are dropped.
    valid_days:
        Validity from (an hour before) ``now``; never beyond the CA's own expiry.
    now:
        The issuing time; the current UTC time by default.
    """
    start = _now(now) - _BACKDATE
    end = min(start + dt.timedelta(days=valid_days), ca.certificate.not_valid_after_utc)
    key = _new_key()
    purpose = _PURPOSE[usage]
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
    )
    unique_hosts = list(dict.fromkeys(hosts))
    if unique_hosts:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_alt_name(host) for host in unique_hosts]),
            critical=False,
        )
    return Issued(key, builder.sign(ca.key, hashes.SHA256()))


def build_crl(
    ca: Issued,
    revoked: Iterable[tuple[int, dt.datetime]],
    *,
    number: int,
    now: dt.datetime | None = None,
) -> x509.CertificateRevocationList:
    """Sign a CRL listing ``revoked`` ``(serial number, revocation time)`` pairs.

    Its next update is the CA's expiry (see the module docstring). ``number`` is the CRL
    number, which must grow with each new list.
    """
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(_now(now) - _BACKDATE)
        .next_update(ca.certificate.not_valid_after_utc)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
    )
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    return builder.sign(ca.key, hashes.SHA256())


# -- files ----------------------------------------------------------------------------------


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write ``key`` as unencrypted PKCS#8 PEM, mode 0600 from the start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # the mode above only applies to a new file
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o644)


def write_certificate(path: Path, certificate: x509.Certificate) -> None:
    """Write ``certificate`` as PEM, mode 0644 (certificates are public)."""
    _write_public(path, certificate.public_bytes(serialization.Encoding.PEM))


def write_crl(path: Path, crl: x509.CertificateRevocationList) -> None:
    """Write ``crl`` as PEM, mode 0644."""
    _write_public(path, crl.public_bytes(serialization.Encoding.PEM))


def load_certificate(path: Path) -> x509.Certificate:
    """Read one PEM certificate (the first of the file).

    Raises
    ------
    OSError
        If the file cannot be read.
    ValueError
        If it holds no PEM certificate.
    """
    certificates = x509.load_pem_x509_certificates(path.read_bytes())
    return certificates[0]


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Read an unencrypted PEM P-256 private key (what :func:`write_private_key` wrote).

    Raises
    ------
    OSError
        If the file cannot be read.
    ValueError
        If it is not an unencrypted PEM EC private key.
    """
    key = _load_any_private_key(path.read_bytes())
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        msg = f"expected an EC private key, got {type(key).__name__}"
        raise ValueError(msg)
    return key


def _load_any_private_key(data: bytes) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:  # encrypted, and we gave no password
        msg = "encrypted private keys are not supported (no way to pass a passphrase)"
        raise ValueError(msg) from exc
    except UnsupportedAlgorithm as exc:
        msg = f"unsupported private key type: {exc}"
        raise ValueError(msg) from exc


def common_name(certificate: x509.Certificate) -> str | None:
    """The subject's common name, or ``None`` when it has none."""
    attributes = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attributes:
        return None
    value = attributes[0].value
    return value if isinstance(value, str) else value.decode("utf-8", errors="replace")


# -- checks (never raise on bad files) ---------------------------------------------------


def _why(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


def check_readable(path: Path, what: str) -> list[str]:
    """``[]`` if ``path`` is a file this process can read, else one problem naming it."""
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        return [f"{what} {path}: {_why(exc)}"]
    if not path.is_file():
        return [f"{what} {path}: not a regular file"]
    return []


def _read(path: Path, what: str, problems: list[str]) -> bytes | None:
    try:
        data = path.read_bytes()
    except OSError as exc:
        problems.append(f"{what} {path}: {_why(exc)}")
        return None
    return data


def _validity_problems(
    certificate: x509.Certificate, path: Path, what: str, now: dt.datetime
) -> list[str]:
    if now < certificate.not_valid_before_utc:
        start = certificate.not_valid_before_utc.isoformat(timespec="seconds")
        return [f"{what} {path}: not valid before {start} (is this machine's clock right?)"]
    if now > certificate.not_valid_after_utc:
        end = certificate.not_valid_after_utc.isoformat(timespec="seconds")
        return [f"{what} {path}: expired on {end}"]
    return []


def _issued_by(certificate: x509.Certificate, cas: Sequence[x509.Certificate]) -> str | None:
    """``None`` if one of ``cas`` signed ``certificate``, else why not."""
    reason = "issued by another CA"
    for ca in cas:
        try:
            certificate.verify_directly_issued_by(ca)
        except ValueError:
            continue  # issuer name differs
        except InvalidSignature:
            reason = "the CA's name matches but its signature does not verify (another CA?)"
        except TypeError:
            reason = "signed with a key type that cannot be checked"
        else:
            return None
    return reason


def _public_der(holder: PrivateKeyTypes | x509.Certificate) -> bytes:
    return holder.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def check_certificate(
    cert_file: Path,
    *,
    ca_file: Path,
    key_file: Path | None,
    expected_cn: str | None,
    usage: Usage = "client",
    now: dt.datetime | None = None,
) -> list[str]:
    """Check a TLS certificate the way the broker (or client) will at handshake time.

    Checked: both files (and ``key_file``) exist and parse; the CA file's certificates are
    within their validity; the certificate is signed by one of them (issuer name and
    signature), is within its validity, allows ``usage`` (extended key usage), matches
    ``key_file``, and has common name ``expected_cn`` (the MQTT user name the ACL knows).

    Returns
    -------
    list of str
        One line per problem, each naming the file; empty when all is well.
    """
    moment = _now(now)
    problems: list[str] = []
    cas = _load_cas(ca_file, moment, problems)
    certificate: x509.Certificate | None = None
    cert_data = _read(cert_file, "cert_file", problems)
    if cert_data is not None:
        try:
            certificate = x509.load_pem_x509_certificates(cert_data)[0]
        except ValueError:
            problems.append(f"cert_file {cert_file}: not a PEM certificate")
    if certificate is not None:
        reason = _issued_by(certificate, cas) if cas else None
        if reason is not None:
            issuer = certificate.issuer.rfc4514_string()
            problems.append(
                f"cert_file {cert_file}: does not chain to ca_file {ca_file}: "
                f"{reason} (issuer {issuer})"
            )
        problems += _validity_problems(certificate, cert_file, "cert_file", moment)
        problems += _usage_problems(certificate, cert_file, usage)
        name = common_name(certificate)
        if expected_cn is not None and name != expected_cn:
            problems.append(
                f"cert_file {cert_file}: common name is {name!r}, expected {expected_cn!r} "
                "(the broker uses it as the MQTT user name the ACL grants topics to)"
            )
    if key_file is not None:
        problems += _key_problems(key_file, certificate, cert_file)
    return problems


def _load_cas(ca_file: Path, now: dt.datetime, problems: list[str]) -> list[x509.Certificate]:
    data = _read(ca_file, "ca_file", problems)
    if data is None:
        return []
    try:
        cas = x509.load_pem_x509_certificates(data)
    except ValueError:
        problems.append(f"ca_file {ca_file}: not a PEM certificate")
        return []
    for ca in cas:
        problems += _validity_problems(ca, ca_file, "ca_file", now)
    return cas


def _key_problems(
    key_file: Path, certificate: x509.Certificate | None, cert_file: Path
) -> list[str]:
    problems: list[str] = []
    data = _read(key_file, "key_file", problems)
    if data is None:
        return problems
    try:
        key = _load_any_private_key(data)
    except ValueError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "not a PEM private key"
        return [f"key_file {key_file}: {first}"]
    if certificate is not None and _public_der(key) != _public_der(certificate):
        return [
            f"key_file {key_file}: does not match cert_file {cert_file} "
            "(they were not issued together)"
        ]
    return []


def _usage_problems(certificate: x509.Certificate, path: Path, usage: Usage) -> list[str]:
    try:
        eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return []
    wanted = _PURPOSE[usage]
    if wanted in eku or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in eku:
        return []
    return [f"cert_file {path}: not a TLS {usage} certificate (extended key usage)"]


def check_verify_key(path: Path, what: str) -> tuple[VerifyKey | None, list[str]]:
    """Load an Ed25519 public key; return it (or ``None``) and the problems met."""
    problems: list[str] = []
    data = _read(path, what, problems)
    if data is None:
        return None, problems
    try:
        return VerifyKey.from_pem(data), []
    except ProtocolError as exc:
        return None, [f"{what} {path}: {exc}"]


def check_key_pair(
    key_file: Path, public_files: Sequence[tuple[str, Path]], *, what: str = "signing_key"
) -> list[str]:
    """Check that the Ed25519 private key loads and matches each public key file.

    Parameters
    ----------
    key_file:
        The PEM Ed25519 private key.
    public_files:
        ``(label, path)`` pairs of public keys that must be this key's (the ``.pub`` beside
        it, the coordinator's enrolment file...); the label names the file's role.
    what:
        How to name the private key in problems (its config key).
    """
    problems: list[str] = []
    data = _read(key_file, what, problems)
    if data is None:
        return problems
    try:
        key = SigningKey.from_pem(data)
    except ProtocolError as exc:
        return [f"{what} {key_file}: {exc}"]
    for label, path in public_files:
        public, found = check_verify_key(path, label)
        problems += found
        if public is not None and public != key.verify_key:
            problems.append(
                f"{label} {path}: key {public.key_id} does not match {what} {key_file} "
                f"(key {key.key_id})"
            )
    return problems
