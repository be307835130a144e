"""The published test vectors: the library, the spec (via an independent reader) and the
manifests must all agree, and every invalid vector must fail with its code."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import safetensors.numpy
from concept_factory import VECTORS

import perfusion_format as pf

from . import spec_reader

MANIFEST = json.loads((VECTORS / "manifest.json").read_text())
INVALID = json.loads((VECTORS / "invalid" / "manifest.json").read_text())["vectors"]
TEST_KEY_ID = MANIFEST["test_key"]["key_id"]


def test_manifest_covers_the_required_vectors() -> None:
    assert {(f["family"], f["dtype"]) for f in MANIFEST["files"]} >= {
        ("sd-1", "F32"), ("sd-1", "F16"), ("sd-2", "F16"), ("sdxl", "F16"),
    }  # fmt: skip
    codes = {entry["code"] for entry in INVALID}
    file_codes = set(pf.ErrorCode) - {pf.ErrorCode.KEY_INVALID}  # KEY_INVALID is about key files
    assert codes == {str(code) for code in file_codes}


@pytest.mark.parametrize("entry", MANIFEST["files"], ids=lambda e: e["file"])
def test_valid_vector_matches_manifest_and_spec(entry: dict) -> None:
    data = (VECTORS / entry["file"]).read_bytes()
    assert len(data) == entry["size"]
    assert "sha256:" + hashlib.sha256(data).hexdigest() == entry["content_digest"]
    # The independent reader computes the same weights digest and finds every signature valid.
    assert spec_reader.weights_digest(data) == entry["weights_digest"]
    assert spec_reader.signatures(data) == [(key, True) for key in entry["signers"]]
    assert entry["signers"] == [TEST_KEY_ID]
    # The library agrees.
    concept = pf.loads(data)
    assert concept.weights_digest == entry["weights_digest"]
    assert pf.content_digest(data) == entry["content_digest"]
    assert concept.family.name == entry["family"] and concept.dtype == entry["dtype"]
    pf.verify(concept, [pf.load_public_key(VECTORS / MANIFEST["test_key"]["public_key"])])
    # Any safetensors reader opens it, and sees the same numbers.
    arrays = safetensors.numpy.load(data)
    assert set(arrays) == set(concept.tensors)
    for name, array in arrays.items():
        if entry["dtype"] != "BF16":
            np.testing.assert_array_equal(array, concept.tensors[name].array)
    # Canonical writer: re-serialising gives the same bytes.
    assert pf.dumps(concept) == data


def test_test_key_files_match_manifest() -> None:
    private = pf.load_private_key(VECTORS / MANIFEST["test_key"]["private_key"])
    public = pf.load_public_key(VECTORS / MANIFEST["test_key"]["public_key"])
    assert private.public_key == public
    assert public.key_id == spec_reader.key_id(public.raw) == TEST_KEY_ID
    other = pf.load_public_key(VECTORS / MANIFEST["other_key"]["public_key"])
    assert other.key_id == MANIFEST["other_key"]["key_id"] != TEST_KEY_ID


@pytest.mark.parametrize("entry", INVALID, ids=lambda e: e["file"])
def test_invalid_vector_fails_with_its_code(entry: dict) -> None:
    path = VECTORS / "invalid" / entry["file"]
    with pytest.raises(pf.PerfusionError) as raised:
        concept = pf.load(path)
        assert entry["check"] == "verify", "a 'load' vector loaded"
        pf.verify(concept, [pf.load_public_key(VECTORS / key) for key in entry["keys"]])
    assert raised.value.code == entry["code"]
    if entry["check"] == "load":
        with pytest.raises(pf.FormatError) as from_bytes:
            pf.loads(path.read_bytes())
        assert from_bytes.value.code == entry["code"]


def test_fingerprint_vector_is_dtype_independent() -> None:
    vector = json.loads((VECTORS / "fingerprint.json").read_text())
    items = [(t["name"], t["shape"], t["values_f32"]) for t in vector["tensors"]]
    assert spec_reader.base_fingerprint(items) == vector["fingerprint"]
    for dtype in (np.float32, np.float16, np.float64):
        weights = [
            (name, np.array(values, dtype=np.float32).astype(dtype).reshape(shape))
            for name, shape, values in items
        ]
        assert pf.base_fingerprint(weights) == vector["fingerprint"], dtype
    # bfloat16 (truncated float32) keeps every sign too; given as precomputed sign bits.
    signs = [
        (name, np.signbit(np.array(values, dtype=np.float32)).reshape(shape))
        for name, shape, values in items
    ]
    assert pf.base_fingerprint(signs) == vector["fingerprint"]


def test_fingerprint_changes_with_one_sign() -> None:
    rng = np.random.default_rng(3)
    weights = [("a.to_k.weight", rng.standard_normal((8, 5)).astype(np.float32))]
    flipped = [("a.to_k.weight", weights[0][1].copy())]
    flipped[0][1][2, 3] *= -1
    assert pf.base_fingerprint(weights) != pf.base_fingerprint(flipped)
    renamed = [("a.to_v.weight", weights[0][1])]
    assert pf.base_fingerprint(weights) != pf.base_fingerprint(renamed)


def test_generator_reproduces_the_committed_vectors() -> None:
    result = subprocess.run(
        [sys.executable, str(VECTORS / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_fingerprint_names_follow_the_table_order() -> None:
    names = pf.fingerprint_names(pf.get_family("sd-1").layers)
    assert len(names) == 32
    assert names[:2] == [
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v.weight",
    ]
    assert names[-1] == "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_v.weight"
