from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from byzedge.protocol.errors import ProtocolError, SignatureError
from byzedge.protocol.signing import ALGORITHM, SigningKey, VerifyKey, key_id_of

# Generating Ed25519 keys is cheap, but hypothesis tests share these two.
KEY = SigningKey.generate()
OTHER_KEY = SigningKey.generate()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_signature_error_is_a_protocol_error() -> None:
    assert issubclass(SignatureError, ProtocolError)


def test_algorithm_is_ed25519() -> None:
    assert ALGORITHM == "ed25519"


def test_signature_is_64_bytes() -> None:
    assert len(KEY.sign(b"message")) == 64


def test_signature_verifies_under_the_matching_key() -> None:
    KEY.verify_key.verify(KEY.sign(b"message"), b"message")


def test_signature_is_deterministic() -> None:
    assert KEY.sign(b"message") == KEY.sign(b"message")


def test_signature_of_another_message_fails() -> None:
    with pytest.raises(SignatureError):
        KEY.verify_key.verify(KEY.sign(b"message"), b"messagE")


def test_signature_under_another_key_fails() -> None:
    with pytest.raises(SignatureError, match=OTHER_KEY.key_id):
        OTHER_KEY.verify_key.verify(KEY.sign(b"message"), b"message")


@pytest.mark.parametrize("length", [0, 1, 63, 65, 128])
def test_signature_of_wrong_length_fails(length: int) -> None:
    with pytest.raises(SignatureError):
        KEY.verify_key.verify(b"\x00" * length, b"message")


@settings(max_examples=200)
@given(index=st.integers(0, 63), mask=st.integers(1, 255))
def test_any_flipped_signature_bit_pattern_fails(index: int, mask: int) -> None:
    signature = bytearray(KEY.sign(b"message"))
    signature[index] ^= mask
    with pytest.raises(SignatureError):
        KEY.verify_key.verify(bytes(signature), b"message")


@settings(max_examples=100)
@given(message=st.binary(max_size=512))
def test_any_message_roundtrips_through_sign_and_verify(message: bytes) -> None:
    KEY.verify_key.verify(KEY.sign(message), message)


def test_key_id_is_16_hex_digits_of_sha256_of_the_raw_public_key() -> None:
    raw = KEY.verify_key.raw
    assert KEY.key_id == hashlib.sha256(raw).hexdigest()[:16]
    assert len(KEY.key_id) == 16
    assert int(KEY.key_id, 16) >= 0


def test_key_id_of_matches_the_verify_key() -> None:
    assert key_id_of(KEY.verify_key.raw) == KEY.verify_key.key_id == KEY.key_id


def test_two_generated_keys_have_different_key_ids() -> None:
    assert KEY.key_id != OTHER_KEY.key_id


def test_raw_public_key_is_32_bytes() -> None:
    assert len(KEY.verify_key.raw) == 32


def test_verify_key_from_raw_roundtrips() -> None:
    assert VerifyKey.from_raw(KEY.verify_key.raw) == KEY.verify_key


def test_verify_key_from_raw_verifies_signatures() -> None:
    VerifyKey.from_raw(KEY.verify_key.raw).verify(KEY.sign(b"m"), b"m")


@pytest.mark.parametrize("length", [0, 1, 31, 33, 64])
def test_verify_key_from_raw_rejects_wrong_length(length: int) -> None:
    with pytest.raises(SignatureError, match=f"{length} bytes"):
        VerifyKey.from_raw(b"\x01" * length)


def test_verify_key_pem_roundtrips() -> None:
    assert VerifyKey.from_pem(KEY.verify_key.to_pem()) == KEY.verify_key


def test_verify_key_pem_is_subject_public_key_info() -> None:
    assert KEY.verify_key.to_pem().startswith(b"-----BEGIN PUBLIC KEY-----")


@pytest.mark.parametrize("data", [b"", b"garbage", b"-----BEGIN PUBLIC KEY-----\nAAAA\n"])
def test_verify_key_from_pem_rejects_garbage(data: bytes) -> None:
    with pytest.raises(SignatureError):
        VerifyKey.from_pem(data)


def test_verify_key_from_pem_rejects_a_non_ed25519_key() -> None:
    pem = (
        Ed448PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(SignatureError, match="Ed25519"):
        VerifyKey.from_pem(pem)


def test_verify_key_from_pem_rejects_a_private_key() -> None:
    with pytest.raises(SignatureError):
        VerifyKey.from_pem(KEY.to_pem())


def test_verify_keys_compare_and_hash_by_raw_bytes() -> None:
    copy = VerifyKey.from_raw(KEY.verify_key.raw)
    assert copy == KEY.verify_key
    assert hash(copy) == hash(KEY.verify_key)
    assert len({copy, KEY.verify_key, OTHER_KEY.verify_key}) == 2


def test_verify_key_is_not_equal_to_its_raw_bytes() -> None:
    assert KEY.verify_key != KEY.verify_key.raw


def test_signing_key_pem_roundtrips() -> None:
    loaded = SigningKey.from_pem(KEY.to_pem())
    assert loaded.verify_key == KEY.verify_key
    assert loaded.sign(b"m") == KEY.sign(b"m")


def test_signing_key_pem_is_unencrypted_pkcs8() -> None:
    assert KEY.to_pem().startswith(b"-----BEGIN PRIVATE KEY-----")


@pytest.mark.parametrize("data", [b"", b"garbage", b"-----BEGIN PRIVATE KEY-----\nAAAA\n"])
def test_signing_key_from_pem_rejects_garbage(data: bytes) -> None:
    with pytest.raises(SignatureError):
        SigningKey.from_pem(data)


def test_signing_key_from_pem_rejects_a_public_key() -> None:
    with pytest.raises(SignatureError):
        SigningKey.from_pem(KEY.verify_key.to_pem())


def test_signing_key_from_pem_rejects_an_encrypted_key() -> None:
    private_key = serialization.load_pem_private_key(KEY.to_pem(), password=None)
    encrypted = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    with pytest.raises(SignatureError, match="unencrypted"):
        SigningKey.from_pem(encrypted)


def test_signing_key_from_pem_rejects_a_non_ed25519_key() -> None:
    pem = Ed448PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(SignatureError, match="Ed25519"):
        SigningKey.from_pem(pem)


def test_save_writes_the_private_key_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "device.key"
    KEY.save(path)
    assert _mode(path) == 0o600


def test_save_writes_the_public_key_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "device.key"
    KEY.save(path)
    assert VerifyKey.load(tmp_path / "device.pub") == KEY.verify_key


def test_save_then_load_gives_the_same_key(tmp_path: Path) -> None:
    path = tmp_path / "device.key"
    KEY.save(path)
    loaded = SigningKey.load(path)
    assert loaded.key_id == KEY.key_id
    KEY.verify_key.verify(loaded.sign(b"m"), b"m")


def test_save_creates_missing_parent_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "device.key"
    KEY.save(path)
    assert SigningKey.load(path).key_id == KEY.key_id


def test_save_over_an_existing_key_replaces_it(tmp_path: Path) -> None:
    path = tmp_path / "device.key"
    OTHER_KEY.save(path)
    KEY.save(path)
    assert SigningKey.load(path).key_id == KEY.key_id
    assert VerifyKey.load(tmp_path / "device.pub") == KEY.verify_key


def test_save_over_a_world_readable_file_tightens_it_to_0600(tmp_path: Path) -> None:
    path = tmp_path / "device.key"
    path.write_bytes(b"old")
    path.chmod(0o644)
    KEY.save(path)
    assert _mode(path) == 0o600


def test_load_of_a_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        SigningKey.load(tmp_path / "missing.key")


def test_repr_of_a_signing_key_shows_the_key_id_and_no_key_material() -> None:
    text = repr(KEY)
    assert KEY.key_id in text
    assert "PRIVATE" not in text
    assert KEY.to_pem().decode() not in text


def test_repr_of_a_verify_key_shows_the_key_id() -> None:
    assert repr(KEY.verify_key) == f"VerifyKey(key_id={KEY.key_id!r})"
