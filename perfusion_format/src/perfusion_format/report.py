"""Where a concept file's bytes go: header, embeddings, gate vectors, key and value targets."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .concept import (
    EMBEDDING_PREFIX,
    GATE_DIRECTION,
    KEY_PREFIX,
    SUPERCLASS_INPUT,
    TARGET_INPUT,
    VALUE_PREFIX,
    Concept,
)
from .files import dumps

__all__ = ["SizeReport", "size_report"]


@dataclass(frozen=True)
class SizeReport:
    """Byte counts of one concept file; ``total`` is the whole file."""

    total: int
    header: int
    embeddings: int
    gate_vectors: int
    key_targets: int
    value_targets: int

    @property
    def tensors(self) -> int:
        """Bytes of tensor data (everything but the length prefix and the header)."""
        return self.embeddings + self.gate_vectors + self.key_targets + self.value_targets


def size_report(concept: Concept) -> SizeReport:
    """Measure the canonical file of ``concept``, split by part.

    ``gate_vectors`` holds i* and u; ``key_targets`` holds i_s (key locking) or the explicit
    per-layer key targets.
    """
    data = dumps(concept)
    (header,) = struct.unpack("<Q", data[:8])

    def group(*prefixes: str) -> int:
        return sum(
            tensor.array.nbytes
            for name, tensor in concept.tensors.items()
            if name.startswith(prefixes)
        )

    return SizeReport(
        total=len(data),
        header=8 + header,
        embeddings=group(EMBEDDING_PREFIX),
        gate_vectors=group(TARGET_INPUT, GATE_DIRECTION),
        key_targets=group(SUPERCLASS_INPUT, KEY_PREFIX),
        value_targets=group(VALUE_PREFIX),
    )
