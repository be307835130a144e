"""Digests: of the file bytes, of a concept's content (what is signed), and of a base model.

All three are SHA-256, written ``sha256:<64 lowercase hex>`` — the one digest grammar of pfx
(:data:`DIGEST`, :func:`is_digest`, :func:`check_digest`), shared by the format, the registry,
the client and the runtime. The byte layouts hashed by the weights digest and the base fingerprint
are defined in spec/concept-format.md §4; every variable-length field is preceded by its length as
an unsigned 64-bit little-endian integer (``u64``), so no two different inputs hash the same bytes.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Iterable, Mapping
from typing import BinaryIO, Protocol

import numpy as np

__all__ = [
    "DIGEST",
    "DIGEST_PATTERN",
    "DIGEST_PREFIX",
    "FINGERPRINT_DOMAIN",
    "WEIGHTS_DOMAIN",
    "base_fingerprint",
    "check_digest",
    "content_digest",
    "file_digest",
    "fingerprint_names",
    "format_digest",
    "is_digest",
    "weights_digest",
]

WEIGHTS_DOMAIN = b"perfusion-weights-digest/v1\x00"
FINGERPRINT_DOMAIN = b"perfusion-base-fingerprint/v1\x00"

#: What every digest starts with: the algorithm, then a colon.
DIGEST_PREFIX = "sha256:"
#: A digest as text, ``sha256:`` and 64 lowercase hex digits (uppercase hex is not a digest), for
#: use inside larger patterns; :data:`DIGEST` is the compiled pattern.
DIGEST_PATTERN = r"sha256:[0-9a-f]{64}"
DIGEST = re.compile(DIGEST_PATTERN)


class _StoredTensor(Protocol):
    dtype: str
    shape: tuple[int, ...]

    @property
    def data(self) -> bytes: ...


def is_digest(text: str) -> bool:
    """Whether ``text`` is a digest: ``sha256:`` and exactly 64 lowercase hex digits."""
    return DIGEST.fullmatch(text) is not None


def check_digest(digest: str) -> str:
    """The 64 hex digits of the digest ``digest``; ``ValueError`` when it is not one
    (:func:`is_digest`). The hex part is safe to use as a file name."""
    if not is_digest(digest):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return digest.removeprefix(DIGEST_PREFIX)


def format_digest(hasher: hashlib._Hash) -> str:
    """Render a finished SHA-256 hasher as ``sha256:<hex>``."""
    return f"{DIGEST_PREFIX}{hasher.hexdigest()}"


def _u64(value: int) -> bytes:
    return struct.pack("<Q", value)


def _field(value: bytes) -> bytes:
    return _u64(len(value)) + value


def content_digest(data: bytes) -> str:
    """The digest of ``data``, ``sha256:<hex>``: for a file's bytes, its content digest, by
    which a registry and the client's cache address it."""
    return format_digest(hashlib.sha256(data))


def file_digest(file: BinaryIO) -> str:
    """:func:`content_digest` of what remains of the open binary ``file``, read in chunks."""
    return format_digest(hashlib.file_digest(file, "sha256"))


def weights_digest(signed_metadata: Mapping[str, str], tensors: Mapping[str, _StoredTensor]) -> str:
    """The canonical digest that signatures cover (spec §4.2).

    Hashes, in order: the domain string; the number of signed metadata entries and each
    ``(key, value)`` sorted by the key's UTF-8 bytes; the number of tensors and, sorted by name,
    each tensor's name, dtype code, rank, dimensions and raw little-endian bytes. Independent of
    JSON key order, whitespace, padding and the signature list.
    """
    hasher = hashlib.sha256(WEIGHTS_DOMAIN)
    items = sorted((key.encode(), value.encode()) for key, value in signed_metadata.items())
    hasher.update(_u64(len(items)))
    for key, value in items:
        hasher.update(_field(key) + _field(value))
    names = sorted(tensors, key=str.encode)
    hasher.update(_u64(len(names)))
    for name in names:
        tensor = tensors[name]
        hasher.update(_field(name.encode()) + _field(tensor.dtype.encode()))
        hasher.update(_u64(len(tensor.shape)) + b"".join(_u64(dim) for dim in tensor.shape))
        hasher.update(_field(tensor.data))
    return format_digest(hasher)


def fingerprint_names(layers: Iterable[tuple[str, int]]) -> list[str]:
    """The UNet state-dict keys :func:`base_fingerprint` covers, in order, for these layers.

    ``layers`` is a family's table (or a concept's :attr:`~perfusion_format.Concept.layers`).
    """
    return [f"{path}.{projection}.weight" for path, _ in layers for projection in ("to_k", "to_v")]


def base_fingerprint(weights: Iterable[tuple[str, np.ndarray]]) -> str:
    """Fingerprint the base weights an edit depends on, identically in any float dtype (spec §4.3).

    ``weights`` are ``(name, array)`` pairs in the order the spec defines (for every attn2 layer in
    the family's table order: ``<path>.to_k.weight`` then ``<path>.to_v.weight``). Only each
    element's sign bit enters the hash — rounding to float16 or bfloat16 never changes a sign, so
    the fingerprint of a model is the same whether it was loaded in fp32, fp16 or bf16, on any
    machine. Per tensor: name, rank, dimensions, then the sign bits in row-major order packed
    eight to a byte, most significant bit first, the last byte padded with zero bits.
    A boolean array is taken as sign bits already computed (e.g. ``torch.signbit`` on a GPU).
    """
    hasher = hashlib.sha256(FINGERPRINT_DOMAIN)
    for name, array in weights:
        values = np.asarray(array)
        hasher.update(_field(name.encode()))
        hasher.update(_u64(values.ndim) + b"".join(_u64(dim) for dim in values.shape))
        signs = values if values.dtype == np.bool_ else np.signbit(values)
        hasher.update(_field(np.packbits(signs.reshape(-1)).tobytes()))
    return format_digest(hasher)
