"""The safetensors container: a strict, bounded parser and a canonical writer.

Layout (safetensors): an unsigned 64-bit little-endian header length ``N``, ``N`` bytes of UTF-8
JSON (optionally followed by spaces so that the data starts 8-byte aligned), then the tensor data
buffer. This module knows nothing about concepts; it enforces only the container rules of
spec/concept-format.md §2 and §6 and reports every violation with its code.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .errors import ErrorCode, FormatError
from .strict_json import StrictJSONError, loads_strict

__all__ = [
    "DTYPES",
    "MAX_FILE_SIZE",
    "MAX_HEADER_SIZE",
    "Container",
    "DType",
    "RawTensor",
    "parse_container",
    "write_container",
]

DType = Literal["F16", "BF16", "F32"]

#: The dtypes a concept file may use, with the numpy dtype that holds their bytes. BF16 has no
#: numpy dtype: its raw 16-bit patterns are held as little-endian uint16.
DTYPES: dict[str, np.dtype] = {
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "F32": np.dtype("<f4"),
}

#: Largest file accepted (4 MiB): an SDXL fp32 concept with explicit key targets is about 0.7 MiB.
MAX_FILE_SIZE = 4 * 1024 * 1024
#: Largest JSON header accepted (128 KiB).
MAX_HEADER_SIZE = 128 * 1024

_TENSOR_FIELDS = frozenset({"dtype", "shape", "data_offsets"})
_ALIGNMENT = 8
_MAX_U64 = 2**64 - 1


@dataclass(frozen=True)
class RawTensor:
    """One tensor as stored: its dtype code, shape and a read-only little-endian array."""

    dtype: DType
    shape: tuple[int, ...]
    array: np.ndarray

    @property
    def data(self) -> bytes:
        """The tensor's bytes exactly as they stand in the file."""
        return self.array.tobytes()


@dataclass(frozen=True)
class Container:
    """A parsed safetensors file: string metadata and tensors by name."""

    metadata: dict[str, str]
    tensors: dict[str, RawTensor]


def _fail(code: ErrorCode, message: str) -> FormatError:
    return FormatError(code, message)


def _decode_header(raw: bytes) -> dict[str, Any]:
    """Decode header bytes: UTF-8, the format's strict JSON (§2.1), an object, then only spaces."""
    text_bytes = raw.rstrip(b" ")
    try:
        text = text_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise _fail(ErrorCode.HEADER_INVALID, "the header is not valid UTF-8") from None
    if not text.startswith("{"):
        raise _fail(ErrorCode.HEADER_INVALID, "the header does not start with '{'")
    try:
        header = loads_strict(text)
    except StrictJSONError as error:
        if error.duplicate is not None:
            raise _fail(
                ErrorCode.DUPLICATE_NAME, f"the header names {error.duplicate!r} twice"
            ) from None
        raise _fail(ErrorCode.HEADER_INVALID, f"the header is not valid JSON: {error}") from None
    if not isinstance(header, dict):
        raise _fail(ErrorCode.HEADER_INVALID, "the header is not a JSON object")
    return header


def _is_count(value: Any) -> bool:
    """A dimension or offset: a JSON integer in 0 … 2⁶⁴ − 1."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_U64


def _check_metadata(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(key, str) and isinstance(item, str) for key, item in value.items()
    ):
        raise _fail(ErrorCode.METADATA_INVALID, "__metadata__ must map strings to strings")
    return value


@dataclass(frozen=True)
class _Entry:
    name: str
    dtype: DType
    shape: tuple[int, ...]
    begin: int
    end: int


def _check_entry(name: str, value: Any) -> _Entry:
    if not isinstance(value, dict) or set(value) != _TENSOR_FIELDS:
        raise _fail(
            ErrorCode.HEADER_INVALID,
            f"tensor {name!r} must have exactly the fields dtype, shape and data_offsets",
        )
    dtype, shape, offsets = value["dtype"], value["shape"], value["data_offsets"]
    if not isinstance(dtype, str):
        raise _fail(ErrorCode.HEADER_INVALID, f"tensor {name!r} has a non-string dtype")
    if dtype not in DTYPES:
        raise _fail(
            ErrorCode.DTYPE_NOT_ALLOWED,
            f"tensor {name!r} has dtype {dtype!r}; allowed: F16, BF16, F32",
        )
    if not isinstance(shape, list) or not all(_is_count(dim) for dim in shape):
        raise _fail(
            ErrorCode.HEADER_INVALID,
            f"tensor {name!r} has a shape that is not a list of integers in 0 … 2⁶⁴ − 1",
        )
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
        raise _fail(
            ErrorCode.HEADER_INVALID,
            f"tensor {name!r} has data_offsets that are not two integers in 0 … 2⁶⁴ − 1",
        )
    begin, end = offsets
    expected = math.prod(shape) * DTYPES[dtype].itemsize
    if end < begin or end - begin != expected:
        raise _fail(
            ErrorCode.BAD_OFFSETS,
            f"tensor {name!r} spans {end - begin} bytes but its shape and dtype need {expected}",
        )
    return _Entry(name, dtype, tuple(shape), begin, end)  # type: ignore[arg-type]


def parse_container(data: bytes) -> Container:
    """Parse ``data`` as a safetensors file under the concept format's container rules.

    Refuses, with the matching :class:`~perfusion_format.errors.ErrorCode`: files over
    :data:`MAX_FILE_SIZE`, a header over :data:`MAX_HEADER_SIZE` (checked before it is read),
    header lengths that point past the end, headers that are not the format's strict JSON
    (leading whitespace, NaN, lone surrogates: HEADER_INVALID) or repeat a name (DUPLICATE_NAME),
    malformed tensor entries (HEADER_INVALID), dtypes outside F16/BF16/F32, more than one dtype,
    offsets that disagree with the shape, overlap, leave gaps or trailing bytes (BAD_OFFSETS), and
    a data buffer that ends early. Tensor arrays are read-only views of ``data``.
    """
    if len(data) > MAX_FILE_SIZE:
        raise _fail(ErrorCode.FILE_TOO_LARGE, f"{len(data)} bytes exceeds {MAX_FILE_SIZE}")
    if len(data) < 8:
        raise _fail(ErrorCode.TRUNCATED, "the file is shorter than its 8-byte header length")
    (header_size,) = struct.unpack("<Q", data[:8])
    if header_size > MAX_HEADER_SIZE:
        raise _fail(
            ErrorCode.HEADER_TOO_LARGE, f"header of {header_size} bytes exceeds {MAX_HEADER_SIZE}"
        )
    if header_size < 2 or header_size > len(data) - 8:
        raise _fail(
            ErrorCode.BAD_HEADER_LENGTH,
            f"header length {header_size} does not fit a file of {len(data)} bytes",
        )
    header = _decode_header(data[8 : 8 + header_size])
    metadata = _check_metadata(header.pop("__metadata__", {}))
    entries = sorted(
        (_check_entry(name, value) for name, value in header.items()),
        key=lambda entry: (entry.begin, entry.end),
    )
    dtypes = {entry.dtype for entry in entries}
    if len(dtypes) > 1:
        raise _fail(ErrorCode.MIXED_DTYPES, f"one dtype per file, found {sorted(dtypes)}")

    buffer = memoryview(data)[8 + header_size :]
    position = 0
    for entry in entries:
        if entry.begin != position:
            kind = "overlaps the previous tensor" if entry.begin < position else "leaves a gap"
            raise _fail(ErrorCode.BAD_OFFSETS, f"tensor {entry.name!r} {kind}")
        position = entry.end
    if position > len(buffer):
        raise _fail(
            ErrorCode.TRUNCATED,
            f"the data buffer holds {len(buffer)} bytes but the tensors need {position}",
        )
    if position < len(buffer):
        raise _fail(ErrorCode.BAD_OFFSETS, f"{len(buffer) - position} bytes follow the last tensor")

    tensors: dict[str, RawTensor] = {}
    for entry in entries:
        array = np.frombuffer(buffer[entry.begin : entry.end], dtype=DTYPES[entry.dtype])
        tensors[entry.name] = RawTensor(entry.dtype, entry.shape, array.reshape(entry.shape))
    return Container(metadata=dict(metadata), tensors=tensors)


def write_container(metadata: dict[str, str], tensors: dict[str, RawTensor]) -> bytes:
    """Serialise to canonical bytes: the same content always gives the same bytes.

    ``__metadata__`` comes first with its keys sorted, then tensors sorted by name, each with its
    data in that order; compact JSON (UTF-8, no escapes beyond JSON's required ones); the header is
    padded with spaces so that the data buffer starts at a multiple of 8 bytes.
    """
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    chunks: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        tensor = tensors[name]
        chunk = np.ascontiguousarray(tensor.array, dtype=DTYPES[tensor.dtype]).tobytes()
        header[name] = {
            "dtype": tensor.dtype,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(chunk)],
        }
        chunks.append(chunk)
        offset += len(chunk)
    encoded = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    encoded += b" " * (-(8 + len(encoded)) % _ALIGNMENT)
    return b"".join([struct.pack("<Q", len(encoded)), encoded, *chunks])
