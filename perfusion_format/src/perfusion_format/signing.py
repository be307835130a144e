"""Ed25519 keys, key files and the signature entries embedded in a concept file (spec §5).

A signature is Ed25519 over the ASCII statement ``perfusion-concept-signature/v1:`` followed by the
concept's weights digest (``sha256:<hex>``). Each entry names the signer's public key and its key
id, so integrity can be checked from the file alone; *authenticity* needs keys the verifier trusts,
passed explicitly (there is no implicit trust anywhere in this package).

Key files:

- private key: PEM "PRIVATE KEY" (PKCS#8, unencrypted), written with mode 0600;
- public key: PEM "PUBLIC KEY" (SubjectPublicKeyInfo), conventionally at ``<private>.pub``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import ErrorCode, FormatError, KeyFileError, SignatureError
from .fileio import read_bounded
from .strict_json import StrictJSONError, loads_strict

__all__ = [
    "MAX_SIGNATURES",
    "SIGNATURE_DOMAIN",
    "PrivateKey",
    "PublicKey",
    "Signature",
    "decode_signatures",
    "encode_signatures",
    "load_private_key",
    "load_public_key",
    "save_private_key",
    "signing_statement",
]

SIGNATURE_DOMAIN = b"perfusion-concept-signature/v1:"
MAX_SIGNATURES = 16
_ENTRY_FIELDS = frozenset({"key_id", "public_key", "signature"})
_MAX_KEY_FILE = 16 * 1024


def signing_statement(weights_digest: str) -> bytes:
    """The exact bytes an Ed25519 signature covers for a concept with this weights digest."""
    return SIGNATURE_DOMAIN + weights_digest.encode("ascii")


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _b64decode_canonical(text: str, length: int) -> bytes | None:
    """Decode standard padded base64 of exactly ``length`` bytes, or None.

    Canonical only: the text must be what encoding the bytes gives back, so unused trailing bits
    cannot carry a second spelling of the same value.
    """
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) != length or _b64encode(raw) != text:
        return None
    return raw


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key (32 raw bytes)."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise KeyFileError(ErrorCode.KEY_INVALID, "an Ed25519 public key is 32 bytes")

    @property
    def key_id(self) -> str:
        """``ed25519:`` + the first 16 bytes of SHA-256(raw key) in lowercase hex."""
        return "ed25519:" + hashlib.sha256(self.raw).hexdigest()[:32]

    def to_base64(self) -> str:
        """The raw key in standard base64 (the form embedded in signature entries)."""
        return _b64encode(self.raw)

    @classmethod
    def from_base64(cls, text: str) -> PublicKey:
        """Parse the canonical base64 form of a raw 32-byte key."""
        raw = _b64decode_canonical(text.strip(), 32)
        if raw is None:
            raise KeyFileError(ErrorCode.KEY_INVALID, "not a base64 Ed25519 public key")
        return cls(raw)

    def to_pem(self) -> bytes:
        """The key as a PEM "PUBLIC KEY" block (SubjectPublicKeyInfo)."""
        return Ed25519PublicKey.from_public_bytes(self.raw).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @classmethod
    def from_pem(cls, data: bytes) -> PublicKey:
        """Parse a PEM "PUBLIC KEY" block holding an Ed25519 key."""
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError):
            raise KeyFileError(ErrorCode.KEY_INVALID, "not a PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(ErrorCode.KEY_INVALID, "the PEM public key is not Ed25519")
        return cls(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True when ``signature`` is this key's Ed25519 signature of ``message``."""
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True


@dataclass(frozen=True)
class PrivateKey:
    """An Ed25519 private key. Its ``repr`` never shows the secret."""

    _key: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> PrivateKey:
        """A new random key."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, data: bytes) -> PrivateKey:
        """Parse an unencrypted PKCS#8 PEM "PRIVATE KEY" block holding an Ed25519 key."""
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise KeyFileError(
                ErrorCode.KEY_INVALID, "not an unencrypted PEM private key"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(ErrorCode.KEY_INVALID, "the PEM private key is not Ed25519")
        return cls(key)

    def to_pem(self) -> bytes:
        """The key as an unencrypted PKCS#8 PEM block."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def public_key(self) -> PublicKey:
        """The matching public key."""
        raw = self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return PublicKey(raw)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message``."""
        return self._key.sign(message)

    def __repr__(self) -> str:
        return f"PrivateKey(public={self.public_key.key_id})"


@dataclass(frozen=True)
class Signature:
    """One embedded signature entry: who signed (key and key id) and the 64 signature bytes."""

    public_key: PublicKey
    signature: bytes

    @property
    def key_id(self) -> str:
        """The signer's key id (derived from the public key, never trusted from the file)."""
        return self.public_key.key_id

    def holds_for(self, weights_digest: str) -> bool:
        """True when this is a valid signature of the statement for ``weights_digest``."""
        return self.public_key.verify(signing_statement(weights_digest), self.signature)

    def to_json(self) -> dict[str, str]:
        """The entry as it is embedded in the ``perfusion.signatures`` list."""
        return {
            "key_id": self.key_id,
            "public_key": self.public_key.to_base64(),
            "signature": _b64encode(self.signature),
        }


def _malformed(message: str) -> SignatureError:
    return SignatureError(ErrorCode.SIGNATURE_MALFORMED, message)


def _decode_entry(index: int, entry: Any) -> Signature:
    if not isinstance(entry, dict) or set(entry) != _ENTRY_FIELDS:
        raise _malformed(f"signature {index} must have exactly key_id, public_key and signature")
    if not all(isinstance(value, str) for value in entry.values()):
        raise _malformed(f"signature {index} has a non-string field")
    raw_key = _b64decode_canonical(entry["public_key"], 32)
    raw_signature = _b64decode_canonical(entry["signature"], 64)
    if raw_key is None or raw_signature is None:
        raise _malformed(f"signature {index} is not canonical base64 of the right length")
    signature = Signature(PublicKey(raw_key), raw_signature)
    if entry["key_id"] != signature.key_id:
        raise _malformed(f"signature {index} names key id {entry['key_id']!r}, not its key's")
    return signature


def decode_signatures(text: str) -> tuple[Signature, ...]:
    """Parse the ``perfusion.signatures`` value: a JSON list of 1–16 distinct signer entries.

    The text is read under the format's strict JSON profile (a repeated member, NaN or a lone
    surrogate is SIGNATURE_MALFORMED, like any other malformed entry).
    """
    try:
        entries = loads_strict(text)
    except StrictJSONError as error:
        raise _malformed(f"perfusion.signatures is not valid JSON: {error}") from None
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_SIGNATURES:
        raise _malformed(f"perfusion.signatures must be a list of 1 to {MAX_SIGNATURES} entries")
    signatures = tuple(_decode_entry(index, entry) for index, entry in enumerate(entries))
    if len({signature.key_id for signature in signatures}) != len(signatures):
        raise _malformed("two signatures are by the same key")
    return signatures


def encode_signatures(signatures: Sequence[Signature]) -> str:
    """Serialise signature entries as compact JSON with sorted keys, in the given order."""
    return json.dumps(
        [signature.to_json() for signature in signatures], separators=(",", ":"), sort_keys=True
    )


def _read_key_file(path: Path) -> bytes:
    try:
        return read_bounded(path, _MAX_KEY_FILE)
    except FormatError:
        raise KeyFileError(ErrorCode.KEY_INVALID, f"{path} is too large to be a key file") from None


def load_private_key(path: str | os.PathLike[str]) -> PrivateKey:
    """Read a private key file (PEM PKCS#8 Ed25519). OSError if it cannot be read."""
    return PrivateKey.from_pem(_read_key_file(Path(path)))


def load_public_key(path: str | os.PathLike[str]) -> PublicKey:
    """Read a public key file: PEM "PUBLIC KEY", or a private key file (its public half)."""
    data = _read_key_file(Path(path))
    if b"PRIVATE KEY" in data:
        return PrivateKey.from_pem(data).public_key
    return PublicKey.from_pem(data)


def save_private_key(key: PrivateKey, path: str | os.PathLike[str]) -> Path:
    """Write ``key`` to ``path`` (mode 0600, never overwriting) and its public key to ``path.pub``.

    Returns the public key's path. Raises FileExistsError when either file exists.
    """
    private_path = Path(path)
    public_path = private_path.with_name(private_path.name + ".pub")
    if public_path.exists():
        raise FileExistsError(f"{public_path} already exists")
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(key.to_pem())
    public_path.write_bytes(key.public_key.to_pem())
    return public_path
