"""The rules a lenient reader would get wrong (spec §2, §2.1, §3.1, §3.2): the JSON profile, lone
surrogates anywhere, control characters, malformed offsets and key targets outside the table.

Files are built by editing the header's JSON text, so the escapes under test stand in the bytes
exactly as a hostile writer would put them. Expected outcomes come from the spec's words or from
an independent oracle (``unicodedata``, UTF-16 decoding, Python's lenient ``json``), never from
the code under test.
"""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from concept_factory import VECTORS, ConceptFactory, build_concept
from hypothesis import given, settings
from hypothesis import strategies as st

import perfusion_format as pf
from perfusion_format.container import RawTensor, parse_container

SIGNED = (VECTORS / "sd1-fp16.perfusion.safetensors").read_bytes()
TEST_KEY = pf.load_public_key(VECTORS / "test-key.pem.pub")
_LOADED = pf.loads(SIGNED)
PLAIN = pf.dumps(pf.Concept(metadata=_LOADED.metadata, tensors=_LOADED.tensors))
MARK = "@MARK@"
Header = dict[str, Any]


def split(data: bytes) -> tuple[Header, bytes]:
    """The header (read leniently: Python's json, last name wins) and the data buffer."""
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + size]), data[8 + size :]


def join(text: str, buffer: bytes, padding: int | None = None) -> bytes:
    """Header text and buffer as a file; padded to 8 bytes unless ``padding`` spaces are given."""
    encoded = text.encode("utf-8")
    encoded += b" " * (-(8 + len(encoded)) % 8 if padding is None else padding)
    return struct.pack("<Q", len(encoded)) + encoded + buffer


def with_raw(data: bytes, change: Callable[[Header], None], raw: str, marker: str = MARK) -> bytes:
    """``data`` after ``change`` put :data:`MARK` somewhere in its header, with ``marker`` (the
    mark, or the mark with its quotes) then replaced by ``raw`` in the JSON text: an escape or a
    token that no JSON writer would produce."""
    header, buffer = split(data)
    change(header)
    text = json.dumps(header, separators=(",", ":"))
    assert text.count(MARK) == 1 and marker in text
    return join(text.replace(marker, raw), buffer)


def with_token(data: bytes, change: Callable[[Header], None], token: str) -> bytes:
    """``data`` after ``change`` put the string :data:`MARK` in its header, with that string
    (quotes included) then replaced by ``token``, raw JSON text."""
    return with_raw(data, change, token, marker=f'"{MARK}"')


def set_metadata(key: str, value: str) -> Callable[[Header], None]:
    return lambda header: header["__metadata__"].update({key: value})


def training(text: str) -> Callable[[Header], None]:
    return set_metadata("perfusion.training", text)


def refused(data: bytes) -> pf.FormatError:
    with pytest.raises(pf.FormatError) as raised:
        pf.loads(data)
    assert "\n" not in raised.value.message
    return raised.value


def rename_first_value_target(header: Header) -> None:
    name = next(key for key in sorted(header) if key.startswith("value_target."))
    header[name + MARK] = header.pop(name)


def rename_signature_member(header: Header) -> None:
    entries = json.loads(header["__metadata__"]["perfusion.signatures"])
    entries[0]["key_id" + MARK] = entries[0].pop("key_id")
    header["__metadata__"]["perfusion.signatures"] = json.dumps(entries)


def mark_signature_value(header: Header) -> None:
    entries = json.loads(header["__metadata__"]["perfusion.signatures"])
    entries[0]["key_id"] += MARK
    header["__metadata__"]["perfusion.signatures"] = json.dumps(entries)


# A lone surrogate escape, at every level of every JSON text the format parses. ``raw`` is one
# backslash in the header itself, two where the escape sits in JSON held in a metadata string.
ONE, TWO = "\\ud800", "\\\\ud800"
SURROGATE_PLACES: dict[str, tuple[bytes, Callable[[Header], None], str, str]] = {
    "metadata value": (PLAIN, set_metadata("modelspec.description", MARK), ONE, "HEADER_INVALID"),
    "metadata key": (PLAIN, set_metadata("x.note" + MARK, "1"), ONE, "HEADER_INVALID"),
    "unsigned metadata value": (SIGNED, mark_signature_value, ONE, "HEADER_INVALID"),
    "tensor name": (PLAIN, rename_first_value_target, ONE, "HEADER_INVALID"),
    "dtype": (PLAIN, lambda h: h["target_input"].update(dtype="F16" + MARK), ONE, "HEADER_INVALID"),
    "training value": (PLAIN, training('{"note":"' + MARK + '"}'), TWO, "INVALID_FIELD"),
    "training name": (PLAIN, training('{"' + MARK + '":1}'), TWO, "INVALID_FIELD"),
    "training, nested": (PLAIN, training('{"a":[{"b":["' + MARK + '"]}]}'), TWO, "INVALID_FIELD"),
    "signature value": (SIGNED, mark_signature_value, TWO, "SIGNATURE_MALFORMED"),
    "signature name": (SIGNED, rename_signature_member, TWO, "SIGNATURE_MALFORMED"),
}  # fmt: skip


@pytest.mark.parametrize("place", SURROGATE_PLACES)
def test_a_lone_surrogate_anywhere_is_refused_with_the_places_code(place: str) -> None:
    data, change, raw, code = SURROGATE_PLACES[place]
    assert refused(with_raw(data, change, raw)).code == code


@pytest.mark.parametrize(
    "escape", ["\\ud800", "\\udbff", "\\udc00", "\\udfff", "\\udc00\\ud800", "\\ud800\\u0041"]
)
def test_every_kind_of_lone_surrogate_is_refused(escape: str) -> None:
    data = with_raw(PLAIN, set_metadata("x.note", "a" + MARK + "b"), escape)
    assert refused(data).code == "HEADER_INVALID"


def test_a_surrogate_pair_is_one_character_and_valid() -> None:
    data = with_raw(PLAIN, set_metadata("x.note", MARK), "\\ud83d\\ude00")
    assert pf.loads(data).metadata["x.note"] == "\N{GRINNING FACE}"
    nested = with_raw(PLAIN, training('{"note":"' + MARK + '"}'), "\\\\ud83d\\\\ude00")
    assert pf.loads(nested).training == {"note": "\N{GRINNING FACE}"}


def _lone(text: str) -> bool:
    """Oracle: does ``text`` written as JSON escapes hold a surrogate that pairs with nothing?"""
    try:
        text.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
    except UnicodeDecodeError:
        return True
    return False


@settings(max_examples=200, deadline=None)
@given(text=st.text(st.characters(exclude_categories=()), max_size=6))
def test_any_string_with_surrogates_is_refused_or_read_back_exactly(text: str) -> None:
    header, buffer = split(PLAIN)
    header["__metadata__"]["x.note"] = text
    data = join(json.dumps(header, separators=(",", ":")), buffer)  # ensure_ascii: escapes
    if _lone(text):
        assert refused(data).code == "HEADER_INVALID"
    else:
        joined = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
        concept = pf.loads(data)
        assert concept.metadata["x.note"] == joined
        assert pf.loads(pf.dumps(concept)).metadata["x.note"] == joined


PFX = Path(sys.executable).with_name("pfx")


@pytest.mark.skipif(not PFX.exists(), reason="the pfx client is not installed in this environment")
@pytest.mark.parametrize("place", SURROGATE_PLACES)
def test_pfx_verify_reports_a_lone_surrogate_with_its_code(place: str, tmp_path: Path) -> None:
    data, change, raw, code = SURROGATE_PLACES[place]
    path = tmp_path / "surrogate.perfusion.safetensors"
    path.write_bytes(with_raw(data, change, raw))
    result = subprocess.run(
        [str(PFX), "verify", "--json", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout)["error"]["code"] == code
    assert result.stderr.startswith(f"error[{code}]: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr and "INTERNAL_ERROR" not in result.stderr


# -- in memory: a Concept that exists can always be digested and written ---------------------------


def test_metadata_built_in_memory_with_a_lone_surrogate_is_refused() -> None:
    for metadata in (
        {**_LOADED.metadata, "x.note": "a\ud800"},
        {**_LOADED.metadata, "x.\udc00": "1"},
    ):
        with pytest.raises(pf.FormatError) as raised:
            pf.Concept(metadata=metadata, tensors=_LOADED.tensors)
        assert raised.value.code == "METADATA_INVALID"
    with pytest.raises(pf.FormatError) as raised:
        build_concept(name="Ted\ud800dy")
    assert raised.value.code == "METADATA_INVALID"


@pytest.mark.parametrize(
    "summary", [{"loss": math.nan}, {"loss": math.inf}, {"lr": [1.0, -math.inf]}, {"n": "\ud800"}]
)
def test_a_training_summary_that_is_not_strict_json_is_refused(summary: dict) -> None:
    with pytest.raises(pf.FormatError) as raised:
        build_concept(training=summary)
    assert raised.value.code == "INVALID_FIELD"


def test_a_strict_training_summary_round_trips() -> None:
    summary = {"note": "\N{GRINNING FACE} é", "lr": 1e-300, "big": 2**64, "list": [None, True]}
    concept = build_concept(training=summary)
    assert pf.loads(pf.dumps(concept)).training == summary


# -- §2.1 the JSON profile, in the header and in the JSON held by metadata -------------------------


@pytest.mark.parametrize("before", [b" ", b"\t", b"\n", b"\r\n", b"\xef\xbb\xbf"])
def test_anything_before_the_headers_brace_is_refused(before: bytes) -> None:
    (size,) = struct.unpack("<Q", SIGNED[:8])
    text = SIGNED[8 : 8 + size].rstrip(b" ")
    assert refused(join((before + text).decode(), SIGNED[8 + size :])).code == "HEADER_INVALID"


@pytest.mark.parametrize("padding", [0, 1, 7, 8, 13, 100])
def test_any_number_of_trailing_spaces_is_read_alignment_or_not(padding: int) -> None:
    (size,) = struct.unpack("<Q", SIGNED[:8])
    text = SIGNED[8 : 8 + size].rstrip(b" ").decode()
    concept = pf.loads(join(text, SIGNED[8 + size :], padding=padding))
    pf.verify(concept, [TEST_KEY])


@pytest.mark.parametrize("after", ["\t", "\n", "\x00"])
def test_trailing_bytes_other_than_spaces_are_refused(after: str) -> None:
    (size,) = struct.unpack("<Q", SIGNED[:8])
    text = SIGNED[8 : 8 + size].rstrip(b" ").decode()
    assert refused(join(text + after, SIGNED[8 + size :])).code == "HEADER_INVALID"


def test_whitespace_between_tokens_is_allowed_everywhere() -> None:
    header, buffer = split(SIGNED)
    signatures = json.loads(header["__metadata__"]["perfusion.signatures"])
    header["__metadata__"]["perfusion.signatures"] = json.dumps(signatures, indent="\t")
    data = join(json.dumps(header, indent=2), buffer)
    pf.verify(pf.loads(data), [TEST_KEY])
    spaced = with_raw(PLAIN, training(MARK), '{ \\"steps\\" :\\r\\n 400 }')
    assert pf.loads(spaced).training == {"steps": 400}


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "9" * 400])
def test_non_finite_numbers_are_refused_in_every_json_text(literal: str) -> None:
    summary = with_token(PLAIN, training(MARK), json.dumps('{"x":' + literal + "}"))
    assert refused(summary).code == "INVALID_FIELD"
    offsets = with_token(PLAIN, lambda h: h["target_input"].update(data_offsets=[0, MARK]), literal)
    assert refused(offsets).code == "HEADER_INVALID"


def test_a_tiny_number_is_finite_and_allowed() -> None:
    data = with_raw(PLAIN, training(MARK), '{\\"x\\":1e-400}')
    assert pf.loads(data).training == {"x": 0.0}


@pytest.mark.parametrize("text", [" {}", "{} ", "\n{}", "{}\n", "\ufeff{}", '"{}"', "[]", "{", ""])
def test_a_training_summary_is_exactly_a_json_object(text: str) -> None:
    header, buffer = split(PLAIN)
    header["__metadata__"]["perfusion.training"] = text
    assert refused(join(json.dumps(header), buffer)).code == "INVALID_FIELD"


AUTHOR = '"pfx test vectors"'
DUPLICATES: dict[str, tuple[bytes, Callable[[Header], None], str, str]] = {
    "metadata key": (SIGNED, set_metadata("modelspec.author", MARK),
                     f'{AUTHOR},"modelspec.author":{AUTHOR}', "DUPLICATE_NAME"),
    "metadata key, escaped": (SIGNED, set_metadata("modelspec.author", MARK),
                              f'{AUTHOR},"modelspec.\\u0061uthor":{AUTHOR}', "DUPLICATE_NAME"),
    "tensor entry field": (SIGNED, lambda h: h["target_input"].update(dtype=MARK),
                           '"F16","dtype":"F16"', "DUPLICATE_NAME"),
    "training member": (PLAIN, training(MARK),
                        json.dumps('{"steps":400,"steps":400}'), "INVALID_FIELD"),
    "training, nested and escaped": (PLAIN, training(MARK),
                                     json.dumps('{"a":[{"b":1,"\\u0062":2}]}'), "INVALID_FIELD"),
}  # fmt: skip


@pytest.mark.parametrize("place", DUPLICATES)
def test_a_name_twice_is_refused_even_with_the_same_value(place: str) -> None:
    data, change, token, code = DUPLICATES[place]
    duplicated = with_token(data, change, token)
    assert refused(duplicated).code == code
    # A lenient reader (Python's json: the last name wins) reads a valid file: only the
    # no-name-twice rule refuses it.
    header, buffer = split(duplicated)
    if code == "INVALID_FIELD":
        summary = header["__metadata__"]["perfusion.training"]
        header["__metadata__"]["perfusion.training"] = json.dumps(json.loads(summary))
    pf.loads(join(json.dumps(header), buffer))


def test_a_signature_entry_naming_a_member_twice_is_malformed() -> None:
    """The repeated key_id carries the right value: a last-wins (or first-wins) JSON reader finds
    a valid signature, so only the no-name-twice rule refuses the file."""
    header, buffer = split(SIGNED)
    listing = header["__metadata__"]["perfusion.signatures"]
    entry = json.loads(listing)[0]
    doubled = listing.replace('"key_id"', f'"key_id":{json.dumps(entry["key_id"])},"key_id"', 1)
    header["__metadata__"]["perfusion.signatures"] = doubled
    data = join(json.dumps(header, separators=(",", ":")), buffer)
    assert json.loads(doubled) == json.loads(listing)  # what a lenient reader sees
    assert refused(data).code == "SIGNATURE_MALFORMED"


# -- §2 malformed versus inconsistent data_offsets -------------------------------------------------


def _one_tensor(entry: str, buffer_size: int = 4) -> bytes:
    header = ('{"t":' + entry + "}").encode()
    return struct.pack("<Q", len(header)) + header + bytes(buffer_size)


@pytest.mark.parametrize(
    ("entry", "code"),
    [
        ('{"dtype":"F32","shape":[1],"data_offsets":[0,4.0]}', "HEADER_INVALID"),
        ('{"dtype":"F32","shape":[1],"data_offsets":[0,4e0]}', "HEADER_INVALID"),
        ('{"dtype":"F32","shape":[1],"data_offsets":["0","4"]}', "HEADER_INVALID"),
        ('{"dtype":"F32","shape":[1],"data_offsets":[0,4,4]}', "HEADER_INVALID"),
        ('{"dtype":"F32","shape":[1],"data_offsets":[4]}', "HEADER_INVALID"),
        ('{"dtype":"F32","shape":[1],"data_offsets":{"0":4}}', "HEADER_INVALID"),
        ('{"dtype":"F32","shape":[1],"data_offsets":[-1,3]}', "HEADER_INVALID"),
        ('{"dtype":"F32","shape":[1],"data_offsets":[0,true]}', "HEADER_INVALID"),
        ('{"dtype":"F32","shape":[1],"data_offsets":null}', "HEADER_INVALID"),
        (f'{{"dtype":"F32","shape":[1],"data_offsets":[0,{2**64}]}}', "HEADER_INVALID"),
        (f'{{"dtype":"F32","shape":[{2**64}],"data_offsets":[0,4]}}', "HEADER_INVALID"),
        ('{"dtype":"F32","shape":[1],"data_offsets":[0,8]}', "BAD_OFFSETS"),
        ('{"dtype":"F32","shape":[1],"data_offsets":[4,0]}', "BAD_OFFSETS"),
        (f'{{"dtype":"F32","shape":[{2**63},4],"data_offsets":[0,4]}}', "BAD_OFFSETS"),
        (f'{{"dtype":"F32","shape":[1],"data_offsets":[{2**64 - 4},{2**64 - 1}]}}', "BAD_OFFSETS"),
    ],
)
def test_malformed_offsets_are_header_invalid_inconsistent_ones_bad_offsets(
    entry: str, code: str
) -> None:
    with pytest.raises(pf.FormatError) as raised:
        parse_container(_one_tensor(entry))
    assert raised.value.code == code


def test_the_largest_offsets_are_well_formed() -> None:
    entry = f'{{"dtype":"F32","shape":[1],"data_offsets":[{2**64 - 5},{2**64 - 1}]}}'
    with pytest.raises(pf.FormatError) as raised:
        parse_container(_one_tensor(entry))
    assert raised.value.code == "BAD_OFFSETS"  # a gap before it, not a malformed entry


# -- §3.2 control characters and whitespace --------------------------------------------------------

WHITE_SPACE = [*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028,
               0x2029, 0x202F, 0x205F, 0x3000]  # fmt: skip
SAMPLE = sorted(
    {*range(0x100), *WHITE_SPACE, 0x180E, 0x200B, 0x200D, 0x202E, 0x2060, 0xFEFF, 0xE000, 0x1F600}
)


def _accepts(base: pf.Concept, key: str, value: str) -> bool:
    try:
        pf.Concept(metadata={**base.metadata, key: value}, tensors=base.tensors)
    except pf.FormatError as error:
        assert error.code == "INVALID_FIELD", error
        return False
    return True


def test_control_characters_are_category_cc_c1_included(make_concept: ConceptFactory) -> None:
    """Oracle: unicodedata's category Cc for controls and str.isspace for whitespace."""
    base = make_concept()
    for code_point in SAMPLE:
        char = chr(code_point)
        control = unicodedata.category(char) == "Cc"
        space = char.isspace()
        label = f"U+{code_point:04X}"
        for key in (pf.Key.TITLE, pf.Key.SUPERCLASS):
            assert _accepts(base, key, f"a{char}b") is not control, (key, label)
            assert _accepts(base, key, f"{char}ab") is not (control or space), (key, label)
            assert _accepts(base, key, f"ab{char}") is not (control or space), (key, label)
        assert _accepts(base, pf.Key.TRIGGER, f"<a{char}b>") is not (control or space), label
    assert unicodedata.category("\x9b") == "Cc"  # the 8-bit CSI is in the sample, and refused


def test_lengths_count_code_points(make_concept: ConceptFactory) -> None:
    base = make_concept()
    emoji = "\N{GRINNING FACE}"  # one code point, two UTF-16 units, four UTF-8 bytes
    assert _accepts(base, pf.Key.TRIGGER, emoji * 64)
    assert not _accepts(base, pf.Key.TRIGGER, emoji * 65)
    assert _accepts(base, pf.Key.TITLE, emoji * 128)
    assert not _accepts(base, pf.Key.TITLE, emoji * 129)


def test_a_leap_second_is_not_a_real_time(make_concept: ConceptFactory) -> None:
    base = make_concept()
    assert _accepts(base, pf.Key.DATE, "2016-12-31T23:59:59Z")
    assert not _accepts(base, pf.Key.DATE, "2016-12-31T23:59:60Z")


# -- §3.1 key targets ------------------------------------------------------------------------------

OUTSIDE = "down_blocks.9.attentions.0.transformer_blocks.0.attn2"


def _key_targets(layers: list[tuple[str, int]]) -> dict[str, np.ndarray]:
    return {path: np.full(width, 0.5) for path, width in layers}


def test_a_key_target_outside_the_table_is_unexpected(make_concept: ConceptFactory) -> None:
    table = list(pf.get_family("sd-1").layers)
    complete = make_concept(superclass_input=None, key_targets=_key_targets(table))
    assert complete.key_targets is not None and len(complete.key_targets) == len(table)
    for keys in ([*table, (OUTSIDE, 320)], [*table, ("not a path!", 320)]):
        with pytest.raises(pf.FormatError) as raised:
            make_concept(superclass_input=None, key_targets=_key_targets(keys))
        assert raised.value.code == "UNEXPECTED_TENSOR"
    with pytest.raises(pf.FormatError) as raised:
        make_concept(superclass_input=None, key_targets=_key_targets(table[1:]))
    assert raised.value.code == "KEY_TARGETS"


def test_custom_key_targets_follow_the_value_targets(make_concept: ConceptFactory) -> None:
    rng = np.random.default_rng(1)
    target = rng.standard_normal(8)
    custom = {
        "family": "custom",
        "embeddings": {"text_encoder": rng.standard_normal((1, 8))},
        "target_input": target,
        "gate_direction": target,
        "superclass_input": None,
        "value_targets": {"a.attn2": rng.standard_normal(4), "b.attn2": rng.standard_normal(6)},
    }
    layers = [("a.attn2", 4), ("b.attn2", 6)]
    assert make_concept(**custom, key_targets=_key_targets(layers)).layers == tuple(layers)
    with pytest.raises(pf.FormatError) as raised:  # c has no value target: not a layer
        make_concept(**custom, key_targets=_key_targets([*layers, ("c.attn2", 4)]))
    assert raised.value.code == "UNEXPECTED_TENSOR"
    with pytest.raises(pf.FormatError) as raised:
        make_concept(**custom, key_targets=_key_targets(layers[:1]))
    assert raised.value.code == "KEY_TARGETS"


# -- the new invalid vectors each break exactly one rule -------------------------------------------


def _lenient(data: bytes, change: Callable[[Header], None]) -> bytes:
    header, buffer = split(data)
    change(header)
    return join(json.dumps(header, separators=(",", ":")), buffer)


def _restore(key: str) -> Callable[[bytes], bytes]:
    """Put back PLAIN's value of one metadata key (the vector's only change)."""
    original = split(PLAIN)[0]["__metadata__"][key]
    return lambda data: _lenient(data, set_metadata(key, original))


def _restore_offsets(data: bytes) -> bytes:
    def change(header: Header) -> None:
        for name, entry in header.items():
            if name != "__metadata__":
                entry["data_offsets"] = [int(offset) for offset in entry["data_offsets"]]

    return _lenient(data, change)


def _redump_signatures(data: bytes) -> bytes:
    def change(header: Header) -> None:
        listing = json.loads(header["__metadata__"]["perfusion.signatures"])
        header["__metadata__"]["perfusion.signatures"] = json.dumps(listing)

    return _lenient(data, change)


def _key_targets_fixed(data: bytes) -> bytes:
    container = parse_container(data)
    tensors = {n: t for n, t in container.tensors.items() if n != f"key_target.{OUTSIDE}"}
    for path, width in pf.get_family("sd-1").layers:
        zeros = np.zeros(width, dtype="<f2")
        tensors.setdefault(f"key_target.{path}", RawTensor("F16", (width,), zeros))
    return pf.dumps(pf.Concept(metadata=container.metadata, tensors=tensors))


REPAIRS: dict[str, Callable[[bytes], bytes]] = {
    "header-leading-space": lambda data: _lenient(data, lambda header: None),
    "header-lone-surrogate": _restore("modelspec.description"),
    "offsets-not-integers": _restore_offsets,
    "duplicate-metadata-key": lambda data: _lenient(data, lambda header: None),
    "title-c1-control": _restore("modelspec.title"),
    "training-nan": _restore("perfusion.training"),
    "training-duplicate-member": lambda data: _lenient(data, training(json.dumps({"steps": 400}))),
    "training-lone-surrogate": _restore("perfusion.training"),
    "signature-duplicate-member": _redump_signatures,
    "key-target-outside-table": _key_targets_fixed,
    "key-targets-incomplete": _key_targets_fixed,
}


@pytest.mark.parametrize("stem", REPAIRS)
def test_each_new_vector_loads_once_its_one_change_is_undone(stem: str) -> None:
    path = VECTORS / "invalid" / f"{stem}.perfusion.safetensors"
    data = path.read_bytes()
    refused(data)
    repaired = pf.loads(REPAIRS[stem](data))
    if repaired.signatures:
        pf.verify(repaired, [TEST_KEY])
