"""Hostile bytes: the parser only ever returns a concept or raises its own error, and no single
changed byte of a signed file gets past both parsing and signature verification."""

from __future__ import annotations

import json
import struct

import pytest
from concept_factory import VECTORS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import perfusion_format as pf

SIGNED = (VECTORS / "sd1-fp16.perfusion.safetensors").read_bytes()
TEST_KEY = pf.load_public_key(VECTORS / "test-key.pem.pub")
(HEADER_SIZE,) = struct.unpack("<Q", SIGNED[:8])
HEADER = json.loads(SIGNED[8 : 8 + HEADER_SIZE])


def parse_or_own_error(data: bytes) -> pf.Concept | None:
    """Parse ``data``; None for the library's own error; anything else propagates and fails."""
    try:
        return pf.loads(data)
    except pf.FormatError as error:
        assert error.code in set(pf.ErrorCode)
        assert "\n" not in error.message
        return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(SIGNED) - 1), st.integers(0, 255)), min_size=1, max_size=8
    )
)
def test_random_byte_edits(edits: list[tuple[int, int]]) -> None:
    data = bytearray(SIGNED)
    for position, value in edits:
        data[position] = value
    parse_or_own_error(bytes(data))


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(0, len(SIGNED)), extra=st.binary(max_size=64))
def test_truncation_and_appended_bytes(cut: int, extra: bytes) -> None:
    concept = parse_or_own_error(SIGNED[:cut] + extra)
    if concept is not None:
        assert SIGNED[:cut] + extra == SIGNED


@settings(max_examples=200, deadline=None)
@given(length=st.integers(0, 2**64 - 1))
def test_any_header_length(length: int) -> None:
    parse_or_own_error(struct.pack("<Q", length) + SIGNED[8:])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _with_header(header: object) -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(text)) + text + SIGNED[8 + HEADER_SIZE :]


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(sorted(HEADER)),
    field=st.sampled_from(["dtype", "shape", "data_offsets", None]),
    value=json_values,
)
def test_header_json_field_replaced(name: str, field: str | None, value: object) -> None:
    header = json.loads(json.dumps(HEADER))
    if field is None or name == "__metadata__":
        header[name] = value
    else:
        header[name][field] = value
    parse_or_own_error(_with_header(header))


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(sorted(HEADER["__metadata__"])), value=st.text(max_size=40))
def test_metadata_value_replaced(key: str, value: str) -> None:
    header = json.loads(json.dumps(HEADER))
    header["__metadata__"][key] = value
    concept = parse_or_own_error(_with_header(header))
    if concept is not None:  # only an unchanged value can still carry the signature
        assert value == HEADER["__metadata__"][key]


CHUNKS = 8


@pytest.mark.parametrize("mask", [0xFF, 0x01], ids=["invert", "low-bit"])
@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_every_single_byte_change_is_caught(mask: int, chunk: int) -> None:
    """Exhaustive over the signed fp16 sd-1 vector: each byte inverted (and, separately, its low
    bit flipped) either fails to parse or fails verification against the test key."""
    size = len(SIGNED)
    begin, end = chunk * size // CHUNKS, (chunk + 1) * size // CHUNKS
    data = bytearray(SIGNED)
    survivors = []
    for position in range(begin, end):
        data[position] ^= mask
        concept = parse_or_own_error(bytes(data))
        if concept is not None:
            try:
                pf.verify(concept, [TEST_KEY])
                survivors.append(position)
            except pf.VerificationError:
                pass
        data[position] ^= mask
    assert survivors == []
