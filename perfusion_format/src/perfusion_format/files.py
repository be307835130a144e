"""Reading and writing concept files: bytes or paths in, validated :class:`Concept` out.

Reads are bounded (a file over the size cap is refused before it is read) and never unpickle
anything; writes are canonical (the same concept always gives the same bytes) and atomic (see
:mod:`perfusion_format.fileio`: a crash never leaves a half-written file).
"""

from __future__ import annotations

import os

from .concept import Concept, Key, check_format_version
from .container import parse_container, write_container
from .fileio import read_bounded, write_atomic
from .signing import decode_signatures, encode_signatures

__all__ = ["dumps", "load", "loads", "save"]


def loads(data: bytes) -> Concept:
    """Parse and validate a concept file held in memory.

    Checks the container, the metadata, every tensor against the base family's layer table, and
    that each embedded signature holds. Raises :class:`~perfusion_format.errors.FormatError`
    (a ``ValueError``) carrying the spec's error code; never any other exception for bad bytes.
    """
    container = parse_container(data)
    metadata = dict(container.metadata)
    signature_block = metadata.pop(Key.SIGNATURES, None)
    check_format_version(metadata)  # a non-concept or a newer major is refused first
    signatures = decode_signatures(signature_block) if signature_block is not None else ()
    return Concept(metadata=metadata, tensors=container.tensors, signatures=signatures)


def load(path: str | os.PathLike[str]) -> Concept:
    """Read and validate the concept file at ``path`` (see :func:`loads`).

    Raises ``OSError`` when the file cannot be read, :class:`FormatError` when it is not valid.
    """
    return loads(read_bounded(path))


def dumps(concept: Concept) -> bytes:
    """The concept's canonical file bytes, its signatures embedded."""
    metadata = dict(concept.metadata)
    if concept.signatures:
        metadata[Key.SIGNATURES] = encode_signatures(concept.signatures)
    return write_container(metadata, dict(concept.tensors))


def save(concept: Concept, path: str | os.PathLike[str]) -> None:
    """Write ``concept`` to ``path`` atomically (see :func:`dumps` and :func:`.write_atomic`)."""
    write_atomic(path, dumps(concept))
