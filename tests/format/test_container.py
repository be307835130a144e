"""Container rules: canonical exact bytes, alignment, bounded reads, round trips."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import safetensors.numpy
from concept_factory import ConceptFactory

import perfusion_format as pf
from perfusion_format.container import RawTensor, parse_container, write_container


def _tensor(values: list[float], dtype: str = "F32") -> RawTensor:
    array = np.array(values, dtype={"F32": "<f4", "F16": "<f2"}[dtype])
    return RawTensor(dtype, array.shape, array)  # type: ignore[arg-type]


def test_exact_bytes_of_a_small_container() -> None:
    data = write_container({"b": "2", "a": "1"}, {"y": _tensor([1.0]), "x": _tensor([2.0, -0.5])})
    header = b'{"__metadata__":{"a":"1","b":"2"},"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"y":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}'  # noqa: E501
    padding = b" " * (-(8 + len(header)) % 8)
    expected = (
        struct.pack("<Q", len(header) + len(padding))
        + header
        + padding
        + struct.pack("<3f", 2.0, -0.5, 1.0)
    )
    assert data == expected
    assert (8 + len(header) + len(padding)) % 8 == 0


def test_insertion_order_does_not_change_bytes(make_concept: ConceptFactory) -> None:
    concept = make_concept()
    reordered = pf.Concept(
        metadata=dict(reversed(list(concept.metadata.items()))),
        tensors=dict(reversed(list(concept.tensors.items()))),
    )
    assert pf.dumps(reordered) == pf.dumps(concept)


def test_reordered_and_padded_header_is_the_same_concept(make_concept: ConceptFactory) -> None:
    """Another writer's layout (key order, whitespace) parses to the same weights digest."""
    data = pf.dumps(make_concept())
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    shuffled = dict(reversed(list(header.items())))
    text = json.dumps(shuffled, indent=1).encode() + b"    "
    other = struct.pack("<Q", len(text)) + text + data[8 + size :]
    assert other != data
    assert pf.loads(other).weights_digest == pf.loads(data).weights_digest


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_round_trip_and_any_safetensors_reader(make_concept: ConceptFactory, dtype: str) -> None:
    concept = make_concept(dtype=dtype)
    data = pf.dumps(concept)
    again = pf.loads(data)
    assert pf.dumps(again) == data
    assert again.dtype == dtype
    assert struct.unpack("<Q", data[:8])[0] % 8 == 0
    if dtype != "BF16":  # numpy has no bfloat16; safetensors.numpy refuses it
        arrays = safetensors.numpy.load(data)
        np.testing.assert_array_equal(arrays["target_input"], again.tensors["target_input"].array)


def test_bf16_values_are_rounded_float32(make_concept: ConceptFactory) -> None:
    values = np.array([1.0, -2.5, 3.14159265, 1e-3, 65504.0, 1.00390625], dtype=np.float32)
    target = np.resize(values, 768)
    concept = make_concept(dtype="BF16", target_input=target, gate_direction=target)
    stored = concept.target_input[: len(values)]
    # Independent rounding: bfloat16 keeps 8 significant bits; nearest representable value.
    for original, got in zip(values, stored, strict=True):
        exponent = np.floor(np.log2(abs(original)))
        step = 2.0 ** (exponent - 7)
        assert abs(got - original) <= step / 2
        assert (np.float32(got).view(np.uint32) & 0xFFFF) == 0
    assert stored[-1] == 1.0  # 1 + 2^-8 is a tie: round half to even


def test_unknown_metadata_survives_round_trip(make_concept: ConceptFactory) -> None:
    concept = make_concept(extra_metadata={"x.vendor.note": "kept", "perfusion.future_key": "1"})
    again = pf.loads(pf.dumps(concept))
    assert again.metadata["x.vendor.note"] == "kept"
    assert again.metadata["perfusion.future_key"] == "1"


def test_newer_minor_version_loads(make_concept: ConceptFactory) -> None:
    concept = make_concept(extra_metadata={"perfusion.new_optional": "x"})
    metadata = dict(concept.metadata, **{"perfusion.version": "1.7"})
    newer = pf.Concept(metadata=metadata, tensors=concept.tensors)
    assert pf.loads(pf.dumps(newer)).version == "1.7"


def test_oversize_file_is_refused_before_reading(tmp_path) -> None:
    path = tmp_path / "big.perfusion.safetensors"
    with open(path, "wb") as handle:
        handle.truncate(pf.MAX_FILE_SIZE + 1)  # sparse: nothing to read anyway
    with pytest.raises(pf.FormatError) as raised:
        pf.load(path)
    assert raised.value.code == "FILE_TOO_LARGE"


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (b'{"__metadata__":{"a":"1"},"__metadata__":{}}', "DUPLICATE_NAME"),
        (b'{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"extra":1}}', "HEADER_INVALID"),
        (b'{"t":{"dtype":"F32","shape":[true],"data_offsets":[0,4]}}', "HEADER_INVALID"),
        (b'{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4.0]}}', "HEADER_INVALID"),
        (b'{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}', "BAD_OFFSETS"),
        (b'{"t":{"dtype":"I8","shape":[4],"data_offsets":[0,4]}}', "DTYPE_NOT_ALLOWED"),
        (b'{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,NaN]}}', "HEADER_INVALID"),
        (b"[1,2]", "HEADER_INVALID"),
        (b'{"__metadata__":{"a":["1"]}}', "METADATA_INVALID"),
        (b'{"__metadata__":{"a":"\xff"}}', "HEADER_INVALID"),
        (b'{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}\t', "HEADER_INVALID"),
    ],
)
def test_container_rules(header: bytes, code: str) -> None:
    data = struct.pack("<Q", len(header)) + header + bytes(4)
    with pytest.raises(pf.FormatError) as raised:
        parse_container(data)
    assert raised.value.code == code


def test_gap_between_tensors_is_refused() -> None:
    header = (
        b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
        b'"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}'
    )
    with pytest.raises(pf.FormatError) as raised:
        parse_container(struct.pack("<Q", len(header)) + header + bytes(12))
    assert raised.value.code == "BAD_OFFSETS"


def test_plain_safetensors_from_the_reference_writer_is_not_a_concept() -> None:
    data = safetensors.numpy.save({"w": np.ones(3, dtype=np.float32)}, metadata={"a": "b"})
    assert parse_container(data).metadata == {"a": "b"}
    with pytest.raises(pf.FormatError) as raised:
        pf.loads(data)
    assert raised.value.code == "NOT_A_CONCEPT"


def test_save_is_atomic_and_keeps_mode(make_concept: ConceptFactory, tmp_path) -> None:
    path = tmp_path / "c.perfusion.safetensors"
    path.write_bytes(b"old")
    path.chmod(0o640)
    pf.save(make_concept(), path)
    assert path.stat().st_mode & 0o777 == 0o640
    assert pf.load(path).token == "<teddy>"
    assert [p.name for p in tmp_path.iterdir()] == ["c.perfusion.safetensors"]
