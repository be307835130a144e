"""Regenerate the test vectors in spec/vectors/ (deterministic: same bytes on every run).

    python spec/vectors/generate.py          # rewrite the vectors and manifests
    python spec/vectors/generate.py --check  # exit 1 if any committed vector differs

Valid vectors are written by perfusion_format; invalid ones are built byte by byte from a valid
file, each breaking exactly one rule of spec/concept-format.md. Keys are derived from published
seeds and are for tests only: never trust them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import perfusion_format as pf

HERE = Path(__file__).resolve().parent
INVALID = HERE / "invalid"
CREATED = "2026-11-25T00:00:00Z"
TEST_KEY_SEED = hashlib.sha256(b"pfx test-only signing key 1 - never trust").digest()
OTHER_KEY_SEED = hashlib.sha256(b"pfx test-only signing key 2 - never trust").digest()
FINGERPRINT = "sha256:" + hashlib.sha256(b"pfx test vectors: not a real base model").hexdigest()

Header = dict[str, Any]


def test_key(seed: bytes) -> pf.PrivateKey:
    """The deterministic test-only key for ``seed``."""
    return pf.PrivateKey(Ed25519PrivateKey.from_private_bytes(seed))


def vector_concept(family_name: str, dtype: pf.DType) -> pf.Concept:
    """A realistic concept with seeded random values and full metadata."""
    family = pf.get_family(family_name)
    rng = np.random.default_rng(int.from_bytes(f"{family_name}/{dtype}".encode(), "little"))
    d = family.text_dim
    target = rng.standard_normal(d)
    return pf.create_concept(
        name="Test teddy",
        token="<teddy>",
        superclass="teddy",
        family=family_name,
        base_fingerprint=FINGERPRINT,
        embeddings={
            encoder: rng.standard_normal((1, w)) * 0.02 for encoder, w in family.text_encoders
        },
        target_input=target,
        gate_direction=target * 0.5 + rng.standard_normal(d) * 0.1,
        superclass_input=target + rng.standard_normal(d) * 0.3,
        value_targets={path: rng.standard_normal(width) for path, width in family.layers or ()},
        dtype=dtype,
        created=CREATED,
        author="pfx test vectors",
        license="CC0-1.0",
        description="Test vector: random values, not a trained concept.",
        tags=("test-vector",),
        training={"steps": 400, "batch": 4, "accumulate": 4, "images": 6, "seed": 0},
    )


VALID = (
    ("sd1-fp32", "sd-1", "F32"),
    ("sd1-fp16", "sd-1", "F16"),
    ("sd2-fp16", "sd-2", "F16"),
    ("sdxl-fp16", "sdxl", "F16"),
)


# -- raw surgery on safetensors bytes ------------------------------------------------------------


def split(data: bytes) -> tuple[Header, bytes]:
    """The JSON header and data buffer of a (valid) safetensors file."""
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + size]), data[8 + size :]


def join(header: Header | str, buffer: bytes) -> bytes:
    """Serialise a header (dict, or raw JSON text) and a buffer, padding like safetensors."""
    text = header if isinstance(header, str) else json.dumps(header, separators=(",", ":"))
    encoded = text.encode()
    encoded += b" " * (-(8 + len(encoded)) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + buffer


def edit_header(data: bytes, change: Callable[[Header], None]) -> bytes:
    """Apply ``change`` to the header dict and re-serialise with the same buffer."""
    header, buffer = split(data)
    change(header)
    return join(header, buffer)


def edit_metadata(data: bytes, **changes: str | None) -> bytes:
    """Set (or with None, delete) ``__metadata__`` keys; dots in keys are written as ``__``."""

    def change(header: Header) -> None:
        for key, value in changes.items():
            name = key.replace("__", ".")
            if value is None:
                del header["__metadata__"][name]
            else:
                header["__metadata__"][name] = value

    return edit_header(data, change)


def first_value_target(header: Header) -> str:
    return next(name for name in sorted(header) if name.startswith("value_target."))


def flip_data_byte(data: bytes, tensor: str, index: int) -> bytes:
    """Flip the lowest bit of byte ``index`` of ``tensor``'s data."""
    header, buffer = split(data)
    begin = header[tensor]["data_offsets"][0]
    out = bytearray(buffer)
    out[begin + index] ^= 0x01
    return join(header, bytes(out))


def set_value(data: bytes, tensor: str, value: float) -> bytes:
    """Overwrite the first element of an F16 tensor."""
    header, buffer = split(data)
    begin = header[tensor]["data_offsets"][0]
    out = bytearray(buffer)
    out[begin : begin + 2] = np.array([value], dtype="<f2").tobytes()
    return join(header, bytes(out))


def shift_tensor(header: Header, name: str, delta: int) -> None:
    header[name]["data_offsets"] = [offset + delta for offset in header[name]["data_offsets"]]


def rebuild(concept: pf.Concept, change: Callable[[dict[str, np.ndarray]], None]) -> bytes:
    """Re-serialise ``concept`` (unsigned) after editing its float16 arrays, unchecked."""
    arrays = {name: tensor.array.copy() for name, tensor in concept.tensors.items()}
    change(arrays)
    header: Header = {"__metadata__": dict(concept.metadata)}
    chunks, offset = [], 0
    for name in sorted(arrays):
        raw = np.ascontiguousarray(arrays[name]).tobytes()
        header[name] = {
            "dtype": {np.dtype("<f2"): "F16", np.dtype("<f8"): "F64"}.get(
                arrays[name].dtype, "F32"
            ),
            "shape": list(arrays[name].shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    return join(header, b"".join(chunks))


def invalid_vectors(signed: bytes, unsigned: pf.Concept) -> list[tuple[str, str, str, str, bytes]]:
    """``(file, code, check, description, bytes)`` for every invalid vector."""
    plain = pf.dumps(unsigned)
    header, buffer = split(signed)
    value0 = first_value_target(header)
    gate_direction = unsigned.tensors["gate_direction"].array

    def overlap(h: Header) -> None:
        shift_tensor(h, value0, -2)

    def drop_value(arrays: dict[str, np.ndarray]) -> None:
        del arrays[value0]

    def extra(arrays: dict[str, np.ndarray]) -> None:
        arrays["notes"] = np.zeros(4, dtype="<f2")

    def both_keys(arrays: dict[str, np.ndarray]) -> None:
        arrays["key_target.down_blocks.0.attentions.0.transformer_blocks.0.attn2"] = np.zeros(
            320, dtype="<f2"
        )

    def wrong_shape(arrays: dict[str, np.ndarray]) -> None:
        arrays[value0] = np.zeros(arrays[value0].size + 8, dtype="<f2")

    def to_f64(arrays: dict[str, np.ndarray]) -> None:
        for name in arrays:
            arrays[name] = arrays[name].astype("<f8")

    def mixed(arrays: dict[str, np.ndarray]) -> None:
        arrays["target_input"] = arrays["target_input"].astype("<f4")

    def degenerate(arrays: dict[str, np.ndarray]) -> None:
        arrays["gate_direction"] = -gate_direction

    def duplicate(text: str) -> str:
        entry = json.dumps(header[value0], separators=(",", ":"))
        return text[:-1] + f',"{value0}":{entry}' + "}"

    def float_offsets(h: Header) -> None:
        h[value0]["data_offsets"] = [float(offset) for offset in h[value0]["data_offsets"]]

    def key_targets(extra: str | None, drop: str | None) -> Callable[[dict[str, np.ndarray]], None]:
        def change(arrays: dict[str, np.ndarray]) -> None:
            del arrays["superclass_input"]
            for path, width in unsigned.layers:
                if path != drop:
                    arrays[f"key_target.{path}"] = np.zeros(width, dtype="<f2")
            if extra is not None:
                arrays[f"key_target.{extra}"] = np.zeros(320, dtype="<f2")

        return change

    header_text = json.dumps(header, separators=(",", ":"))
    signature_list = header["__metadata__"]["perfusion.signatures"]
    key_id_member = signature_list[signature_list.index('"key_id"') : signature_list.index(",")]
    repeated_key_id = signature_list.replace(key_id_member, f"{key_id_member},{key_id_member}", 1)
    author_member = '"modelspec.author":"pfx test vectors",'
    repeated_author = header_text.replace(
        '{"__metadata__":{', '{"__metadata__":{' + author_member, 1
    )
    training = unsigned.metadata["perfusion.training"][:-1]  # the object without its closing }
    outside = "down_blocks.9.attentions.0.transformer_blocks.0.attn2"
    bad_signature = json.dumps(
        [{"key_id": "ed25519:" + "0" * 32, "public_key": "AAAA", "signature": "AAAA"}]
    )
    return [
        ("file-too-large.bin", "FILE_TOO_LARGE", "load",
         "4 MiB + 1 byte: over the file size cap", plain + bytes(pf.MAX_FILE_SIZE + 1 - len(plain))),
        ("truncated-length.bin", "TRUNCATED", "load",
         "5 bytes: shorter than the 8-byte header length", signed[:5]),
        ("truncated-data.perfusion.safetensors", "TRUNCATED", "load",
         "the last 100 bytes of the data buffer are missing", signed[:-100]),
        ("header-length-past-end.perfusion.safetensors", "BAD_HEADER_LENGTH", "load",
         "the header length points past the end of the file",
         struct.pack("<Q", len(signed)) + signed[8:]),
        ("header-too-large.perfusion.safetensors", "HEADER_TOO_LARGE", "load",
         "the header length exceeds the 128 KiB cap",
         struct.pack("<Q", pf.MAX_HEADER_SIZE + 1) + signed[8:]),
        ("header-not-json.perfusion.safetensors", "HEADER_INVALID", "load",
         "the header is not JSON", join(header_text.replace(":", "=", 1), buffer)),
        ("duplicate-name.perfusion.safetensors", "DUPLICATE_NAME", "load",
         "a tensor name appears twice in the header", join(duplicate(header_text), buffer)),
        ("overlapping-offsets.perfusion.safetensors", "BAD_OFFSETS", "load",
         "a tensor's data_offsets overlap the previous tensor", edit_header(signed, overlap)),
        ("trailing-bytes.perfusion.safetensors", "BAD_OFFSETS", "load",
         "16 bytes follow the last tensor", signed + bytes(16)),
        ("dtype-f64.perfusion.safetensors", "DTYPE_NOT_ALLOWED", "load",
         "tensors stored as F64", rebuild(unsigned, to_f64)),
        ("mixed-dtypes.perfusion.safetensors", "MIXED_DTYPES", "load",
         "target_input is F32 while the rest is F16", rebuild(unsigned, mixed)),
        ("metadata-not-string.perfusion.safetensors", "METADATA_INVALID", "load",
         "a __metadata__ value is a number",
         edit_header(plain, lambda h: h["__metadata__"].update({"perfusion.inference_beta": 0.7}))),
        ("not-a-concept.safetensors", "NOT_A_CONCEPT", "load",
         "a plain safetensors file without perfusion.format", edit_metadata(plain, perfusion__format=None)),
        ("major-version-2.perfusion.safetensors", "UNSUPPORTED_VERSION", "load",
         "declares format version 2.0", edit_metadata(plain, perfusion__version="2.0")),
        ("missing-trigger.perfusion.safetensors", "MISSING_FIELD", "load",
         "modelspec.trigger_phrase (the token) is missing",
         edit_metadata(plain, modelspec__trigger_phrase=None)),
        ("unknown-family.perfusion.safetensors", "INVALID_FIELD", "load",
         "perfusion.base_family is not a known family",
         edit_metadata(plain, perfusion__base_family="sd-9")),
        ("negative-tau.perfusion.safetensors", "INVALID_FIELD", "load",
         "perfusion.inference_tau is not positive", edit_metadata(plain, perfusion__inference_tau="-0.1")),
        ("missing-value-target.perfusion.safetensors", "MISSING_TENSOR", "load",
         "one layer of the sd-1 table has no value target", rebuild(unsigned, drop_value)),
        ("unexpected-tensor.perfusion.safetensors", "UNEXPECTED_TENSOR", "load",
         "a tensor the format does not define", rebuild(unsigned, extra)),
        ("both-key-forms.perfusion.safetensors", "KEY_TARGETS", "load",
         "carries superclass_input and an explicit key target", rebuild(unsigned, both_keys)),
        ("wrong-shape.perfusion.safetensors", "SHAPE_MISMATCH", "load",
         "a value target 8 wider than its layer", rebuild(unsigned, wrong_shape)),
        ("nan.perfusion.safetensors", "NON_FINITE", "load",
         "a value target holds NaN", set_value(plain, value0, float("nan"))),
        ("degenerate-gate.perfusion.safetensors", "DEGENERATE_GATE", "load",
         "i*ᵀu is negative", rebuild(unsigned, degenerate)),
        ("signature-malformed.perfusion.safetensors", "SIGNATURE_MALFORMED", "load",
         "a signature entry with short keys and a wrong key id",
         edit_metadata(plain, perfusion__signatures=bad_signature)),
        ("tampered-tensor.perfusion.safetensors", "SIGNATURE_INVALID", "load",
         "one bit of a value target flipped after signing", flip_data_byte(signed, value0, 0)),
        ("tampered-metadata.perfusion.safetensors", "SIGNATURE_INVALID", "load",
         "modelspec.title changed after signing", edit_metadata(signed, modelspec__title="Evil teddy")),
        ("header-leading-space.perfusion.safetensors", "HEADER_INVALID", "load",
         "one space before the header's opening brace", join(" " + header_text, buffer)),
        ("header-lone-surrogate.perfusion.safetensors", "HEADER_INVALID", "load",
         "a metadata value holds the lone surrogate escape \\ud800",
         edit_metadata(plain, modelspec__description="Test vector \ud800")),
        ("offsets-not-integers.perfusion.safetensors", "HEADER_INVALID", "load",
         "a value target's data_offsets are written as floats (6144.0), right in value",
         edit_header(signed, float_offsets)),
        ("duplicate-metadata-key.perfusion.safetensors", "DUPLICATE_NAME", "load",
         "modelspec.author appears twice in __metadata__, with the same value",
         join(repeated_author, buffer)),
        ("title-c1-control.perfusion.safetensors", "INVALID_FIELD", "load",
         "modelspec.title holds U+009B, a C1 control character",
         edit_metadata(plain, modelspec__title="Test\u009bteddy")),
        ("training-nan.perfusion.safetensors", "INVALID_FIELD", "load",
         "perfusion.training holds the literal NaN",
         edit_metadata(plain, perfusion__training=training + ',"loss":NaN}')),
        ("training-duplicate-member.perfusion.safetensors", "INVALID_FIELD", "load",
         "perfusion.training names steps twice, with the same value",
         edit_metadata(plain, perfusion__training=training + ',"steps":400}')),
        ("training-lone-surrogate.perfusion.safetensors", "INVALID_FIELD", "load",
         "perfusion.training holds the lone surrogate escape \\udc00",
         edit_metadata(plain, perfusion__training=training + ',"note":"\\udc00"}')),
        ("signature-duplicate-member.perfusion.safetensors", "SIGNATURE_MALFORMED", "load",
         "the signature entry names key_id twice, with the same (right) value",
         edit_metadata(signed, perfusion__signatures=repeated_key_id)),
        ("key-target-outside-table.perfusion.safetensors", "UNEXPECTED_TENSOR", "load",
         "explicit key targets for every layer, plus one for a layer not in the sd-1 table",
         rebuild(unsigned, key_targets(extra=outside, drop=None))),
        ("key-targets-incomplete.perfusion.safetensors", "KEY_TARGETS", "load",
         "explicit key targets for every layer of the sd-1 table but the first",
         rebuild(unsigned, key_targets(extra=None, drop=unsigned.layers[0][0]))),
        ("unsigned.perfusion.safetensors", "NOT_SIGNED", "verify",
         "a valid file with no signature", plain),
        ("other-signer.perfusion.safetensors", "SIGNER_MISSING", "verify",
         "signed by the test key, verified against other-key.pem.pub", signed),
    ]  # fmt: skip


def fingerprint_vector() -> dict[str, Any]:
    """Tiny weights whose fingerprint is the same in F32, F16 and BF16 (spec §4.3)."""
    rng = np.random.default_rng(7)
    weights = [
        ("layer.attn2.to_k.weight", rng.standard_normal((4, 3)).astype(np.float32)),
        ("layer.attn2.to_v.weight", rng.standard_normal((4, 3)).astype(np.float32)),
    ]
    weights[0][1][0, 0] = -0.0
    weights[1][1][1, 2] = -1e-9  # rounds to -0.0 in float16: the sign survives
    return {
        "description": "pf.base_fingerprint over these (name, array) pairs, in this order",
        "tensors": [
            {"name": name, "shape": list(array.shape), "values_f32": array.ravel().tolist()}
            for name, array in weights
        ],
        "fingerprint": pf.base_fingerprint(weights),
    }


def build() -> dict[Path, bytes]:
    """Every vector file's path and bytes."""
    key, other = test_key(TEST_KEY_SEED), test_key(OTHER_KEY_SEED)
    files: dict[Path, bytes] = {
        HERE / "test-key.pem": key.to_pem(),
        HERE / "test-key.pem.pub": key.public_key.to_pem(),
        HERE / "other-key.pem.pub": other.public_key.to_pem(),
    }
    manifest = []
    for stem, family, dtype in VALID:
        data = pf.dumps(pf.sign(vector_concept(family, dtype), key))
        concept = pf.loads(data)
        files[HERE / f"{stem}.perfusion.safetensors"] = data
        manifest.append(
            {
                "file": f"{stem}.perfusion.safetensors",
                "family": family,
                "dtype": dtype,
                "size": len(data),
                "content_digest": pf.content_digest(data),
                "weights_digest": concept.weights_digest,
                "signers": [signature.key_id for signature in concept.signatures],
            }
        )
    files[HERE / "manifest.json"] = _json(
        {
            "test_key": {
                "private_key": "test-key.pem",
                "public_key": "test-key.pem.pub",
                "key_id": key.public_key.key_id,
                "test_only": True,
                "seed": "sha256('pfx test-only signing key 1 - never trust')",
            },
            "other_key": {"public_key": "other-key.pem.pub", "key_id": other.public_key.key_id},
            "files": manifest,
        }
    )
    unsigned = vector_concept("sd-1", "F16")
    signed = files[HERE / "sd1-fp16.perfusion.safetensors"]
    entries = []
    for name, code, check, description, data in invalid_vectors(signed, unsigned):
        files[INVALID / name] = data
        entry = {"file": name, "code": code, "check": check, "description": description}
        entry["keys"] = ["other-key.pem.pub"] if code == "SIGNER_MISSING" else []
        entries.append(entry)
    files[INVALID / "manifest.json"] = _json({"vectors": entries})
    files[HERE / "fingerprint.json"] = _json(fingerprint_vector())
    return files


def _json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode()


def main() -> int:
    """Write the vectors, or with --check compare them with what is on disk."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    check = parser.parse_args().check
    stale = []
    for path, data in build().items():
        if check:
            if not path.exists() or path.read_bytes() != data:
                stale.append(path.relative_to(HERE))
        else:
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(data)
    if stale:
        print("stale vectors:", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
