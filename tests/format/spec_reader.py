"""A second, minimal reader written from spec/concept-format.md alone (no perfusion_format).

It computes the digests, key ids, signature checks and base fingerprints the spec defines, so the
tests can hold the library and the spec to each other. Deliberately plain: struct, json, hashlib,
base64 and the cryptography package's Ed25519 — what an outside implementer would use.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def u64(value: int) -> bytes:
    return struct.pack("<Q", value)


def read(data: bytes) -> tuple[dict[str, str], dict[str, tuple[str, list[int], bytes]]]:
    """``(metadata, {name: (dtype, shape, raw bytes)})`` of a well-formed file."""
    (size,) = struct.unpack("<Q", data[:8])
    header: dict[str, Any] = json.loads(data[8 : 8 + size])
    buffer = data[8 + size :]
    metadata = header.pop("__metadata__")
    tensors = {
        name: (
            entry["dtype"],
            entry["shape"],
            buffer[entry["data_offsets"][0] : entry["data_offsets"][1]],
        )
        for name, entry in header.items()
    }
    return metadata, tensors


def weights_digest(data: bytes) -> str:
    """Spec §4.2, step by step."""
    metadata, tensors = read(data)
    signed = {k: v for k, v in metadata.items() if k != "perfusion.signatures"}
    out = bytearray(b"perfusion-weights-digest/v1\x00")
    out += u64(len(signed))
    for key in sorted(signed, key=lambda k: k.encode("utf-8")):
        for part in (key.encode("utf-8"), signed[key].encode("utf-8")):
            out += u64(len(part)) + part
    out += u64(len(tensors))
    for name in sorted(tensors, key=lambda k: k.encode("utf-8")):
        dtype, shape, raw = tensors[name]
        for part in (name.encode("utf-8"), dtype.encode("ascii")):
            out += u64(len(part)) + part
        out += u64(len(shape)) + b"".join(u64(dim) for dim in shape)
        out += u64(len(raw)) + raw
    return "sha256:" + hashlib.sha256(bytes(out)).hexdigest()


def key_id(raw_public_key: bytes) -> str:
    return "ed25519:" + hashlib.sha256(raw_public_key).hexdigest()[:32]


def signatures(data: bytes) -> list[tuple[str, bool]]:
    """``(key id, holds)`` for every embedded signature (spec §5)."""
    metadata, _ = read(data)
    statement = b"perfusion-concept-signature/v1:" + weights_digest(data).encode("ascii")
    results = []
    for entry in json.loads(metadata.get("perfusion.signatures", "[]")):
        raw_key = base64.b64decode(entry["public_key"])
        assert entry["key_id"] == key_id(raw_key)
        try:
            Ed25519PublicKey.from_public_bytes(raw_key).verify(
                base64.b64decode(entry["signature"]), statement
            )
            holds = True
        except InvalidSignature:
            holds = False
        results.append((entry["key_id"], holds))
    return results


def sign_bits(values: list[float]) -> bytes:
    """Pack sign bits eight to a byte, first element in the most significant bit (spec §4.3)."""
    packed = bytearray((len(values) + 7) // 8)
    for index, value in enumerate(values):
        if struct.pack(">f", value)[0] & 0x80:
            packed[index // 8] |= 0x80 >> (index % 8)
    return bytes(packed)


def base_fingerprint(tensors: list[tuple[str, list[int], list[float]]]) -> str:
    """Spec §4.3 over ``(name, shape, row-major values)``."""
    out = bytearray(b"perfusion-base-fingerprint/v1\x00")
    for name, shape, values in tensors:
        out += u64(len(name.encode())) + name.encode()
        out += u64(len(shape)) + b"".join(u64(dim) for dim in shape)
        bits = sign_bits(values)
        out += u64(len(bits)) + bits
    return "sha256:" + hashlib.sha256(bytes(out)).hexdigest()
