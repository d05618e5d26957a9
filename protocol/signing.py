"""Ed25519 keys, signatures and key identifiers.

Private keys live in PEM (PKCS#8) files readable only by their owner, never in a config
file; public keys travel as PEM (SubjectPublicKeyInfo) files or raw 32-byte values. A key
id is the first 16 hex digits of the SHA-256 of the raw public key: short enough for a
header, long enough that two enrolled keys never collide by accident.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from byzedge.protocol.errors import SignatureError

__all__ = ["ALGORITHM", "SigningKey", "VerifyKey", "key_id_of"]

ALGORITHM = "ed25519"


def key_id_of(raw_public_key: bytes) -> str:
    """Return the key id (16 hex digits of SHA-256) of a raw 32-byte public key."""
    return hashlib.sha256(raw_public_key).hexdigest()[:16]


class VerifyKey:
    """An Ed25519 public key that verifies signatures.

    Parameters
    ----------
    public_key:
        The ``cryptography`` public key object.
    """

    __slots__ = ("_key", "key_id", "raw")

    def __init__(self, public_key: Ed25519PublicKey) -> None:
        self._key = public_key
        self.raw = public_key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id = key_id_of(self.raw)

    @classmethod
    def from_raw(cls, raw: bytes) -> VerifyKey:
        """Build a key from its 32 raw bytes; raise :class:`SignatureError` if invalid."""
        try:
            return cls(Ed25519PublicKey.from_public_bytes(raw))
        except ValueError as exc:
            msg = f"not a raw Ed25519 public key ({len(raw)} bytes)"
            raise SignatureError(msg) from exc

    @classmethod
    def from_pem(cls, data: bytes) -> VerifyKey:
        """Build a key from PEM (SubjectPublicKeyInfo) bytes."""
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError as exc:
            msg = "not a PEM public key"
            raise SignatureError(msg) from exc
        if not isinstance(key, Ed25519PublicKey):
            msg = f"expected an Ed25519 public key, got {type(key).__name__}"
            raise SignatureError(msg)
        return cls(key)

    @classmethod
    def load(cls, path: Path) -> VerifyKey:
        """Read a PEM public key file."""
        return cls.from_pem(path.read_bytes())

    def to_pem(self) -> bytes:
        """Return the key as PEM (SubjectPublicKeyInfo) bytes."""
        return self._key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def verify(self, signature: bytes, message: bytes) -> None:
        """Raise :class:`SignatureError` unless ``signature`` signs ``message``."""
        try:
            self._key.verify(signature, message)
        except InvalidSignature as exc:
            msg = f"signature does not verify under key {self.key_id}"
            raise SignatureError(msg) from exc

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VerifyKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"VerifyKey(key_id={self.key_id!r})"


class SigningKey:
    """An Ed25519 private key.

    Parameters
    ----------
    private_key:
        The ``cryptography`` private key object.
    """

    __slots__ = ("_key", "verify_key")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.verify_key = VerifyKey(private_key.public_key())

    @property
    def key_id(self) -> str:
        """The key id of the matching public key."""
        return self.verify_key.key_id

    @classmethod
    def generate(cls) -> SigningKey:
        """Create a fresh random key."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, data: bytes) -> SigningKey:
        """Build a key from unencrypted PKCS#8 PEM bytes."""
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            msg = "not an unencrypted PEM private key"
            raise SignatureError(msg) from exc
        if not isinstance(key, Ed25519PrivateKey):
            msg = f"expected an Ed25519 private key, got {type(key).__name__}"
            raise SignatureError(msg)
        return cls(key)

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        """Read a PEM private key file."""
        return cls.from_pem(path.read_bytes())

    def to_pem(self) -> bytes:
        """Return the key as unencrypted PKCS#8 PEM bytes."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def save(self, path: Path) -> None:
        """Write the private key (mode 0600) and its public key beside it (``.pub``)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        # Create with 0600 from the start so the key is never briefly world-readable.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        # The mode above only applies to a new file: tighten one that already existed.
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(self.to_pem())
        path.with_suffix(".pub").write_bytes(self.verify_key.to_pem())

    def sign(self, message: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature of ``message``."""
        return self._key.sign(message)

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id!r})"
