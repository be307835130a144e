"""Concept validation: metadata rules, family layer tables, key forms, values."""

from __future__ import annotations

import numpy as np
import pytest
from concept_factory import ConceptFactory

import perfusion_format as pf


def _code(make: ConceptFactory, **overrides) -> str:
    with pytest.raises(pf.FormatError) as raised:
        make(**overrides)
    return raised.value.code


@pytest.mark.parametrize(
    ("family", "layers", "width", "encoders"),
    [
        ("sd-1", 16, 12_480, {"text_encoder": 768}),
        ("sd-2", 16, 12_480, {"text_encoder": 1024}),
        ("sdxl", 70, 83_200, {"text_encoder": 768, "text_encoder_2": 1280}),
    ],
)
def test_family_tables_match_the_architecture(family, layers, width, encoders) -> None:
    spec = pf.get_family(family)
    assert len(spec.layers) == layers and spec.total_width == width
    assert dict(spec.text_encoders) == encoders
    assert all(path.endswith(".attn2") for path, _ in spec.layers)
    assert len({path for path, _ in spec.layers}) == layers


def test_accessors_return_what_was_stored(make_concept: ConceptFactory) -> None:
    rng = np.random.default_rng(5)
    values = {path: rng.standard_normal(w) for path, w in pf.get_family("sdxl").layers}
    concept = make_concept(
        family="sdxl", dtype="F32", value_targets=values, inference_gate=(0.6, 0.2)
    )
    assert concept.layers == pf.get_family("sdxl").layers
    for path, array in concept.value_targets.items():
        np.testing.assert_array_equal(array, values[path].astype(np.float32))
    assert concept.target_input.shape == (2048,)
    assert set(concept.embeddings) == {"text_encoder", "text_encoder_2"}
    assert concept.key_targets is None and concept.superclass_input is not None
    assert concept.inference_gate == pf.Gate(0.6, 0.2)
    assert concept.training_gate == pf.Gate(0.75, 0.1)
    assert concept.metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base/perfusion"
    assert concept.created.year == 2026
    with pytest.raises(ValueError, match="read-only"):
        concept.target_input[0] = 1.0


def test_explicit_key_targets_instead_of_superclass(make_concept: ConceptFactory) -> None:
    keys = {path: np.full(w, 0.5) for path, w in pf.get_family("sd-1").layers}
    concept = make_concept(superclass_input=None, key_targets=keys)
    assert concept.superclass_input is None
    assert set(concept.key_targets) == set(keys)
    partial = dict(list(keys.items())[:-1])
    assert _code(make_concept, superclass_input=None, key_targets=partial) == "KEY_TARGETS"
    assert _code(make_concept, superclass_input=None) == "KEY_TARGETS"


def test_custom_family_takes_its_layers_from_the_file(make_concept: ConceptFactory) -> None:
    rng = np.random.default_rng(1)
    layers = {"down.0.attn2": rng.standard_normal(32), "up.0.attn2": rng.standard_normal(64)}
    target = rng.standard_normal(48)
    concept = make_concept(
        family="custom",
        embeddings={"text_encoder": rng.standard_normal((1, 48))},
        target_input=target,
        gate_direction=target,
        superclass_input=target,
        value_targets=layers,
    )
    assert concept.layers == (("down.0.attn2", 32), ("up.0.attn2", 64))
    assert pf.loads(pf.dumps(concept)).layers == concept.layers
    wrong_dim = dict(target_input=target[:40], gate_direction=target[:40])
    assert (
        _code(
            make_concept,
            family="custom",
            embeddings={"text_encoder": np.ones((1, 48))},
            superclass_input=target,
            value_targets=layers,
            **wrong_dim,
        )
        == "SHAPE_MISMATCH"
    )


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"token": "two words"}, "INVALID_FIELD"),
        ({"token": ""}, "INVALID_FIELD"),
        ({"superclass": " teddy"}, "INVALID_FIELD"),
        ({"name": "x" * 129}, "INVALID_FIELD"),
        ({"base_fingerprint": "sha256:ABC"}, "INVALID_FIELD"),
        ({"created": "2026-02-30T00:00:00Z"}, "INVALID_FIELD"),
        ({"created": "yesterday"}, "INVALID_FIELD"),
        ({"inference_gate": (0.7, 0.0)}, "INVALID_FIELD"),
        ({"inference_gate": (float("nan"), 0.1)}, "INVALID_FIELD"),
        ({"training_gate": (0.75, -1.0)}, "INVALID_FIELD"),
        ({"dtype": "F64"}, "DTYPE_NOT_ALLOWED"),
        ({"target_input": np.full(768, np.inf)}, "NON_FINITE"),
        ({"gate_direction": np.zeros(768)}, "DEGENERATE_GATE"),
        ({"embeddings": {"text_encoder": np.ones((1, 1024))}}, "SHAPE_MISMATCH"),
        ({"value_targets": {}}, "MISSING_TENSOR"),
    ],
)
def test_invalid_concepts_are_refused(make_concept: ConceptFactory, overrides, code) -> None:
    assert _code(make_concept, **overrides) == code


def test_float16_overflow_is_non_finite(make_concept: ConceptFactory) -> None:
    values = {path: np.full(w, 1e6) for path, w in pf.get_family("sd-1").layers}
    assert _code(make_concept, value_targets=values) == "NON_FINITE"
    assert make_concept(dtype="F32", value_targets=values).dtype == "F32"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("perfusion.base_family", "sd-3"),
        ("modelspec.architecture", "stable-diffusion-v1/lora"),
        ("modelspec.sai_model_spec", "2.0.0"),
        ("perfusion.version", "1"),
        ("perfusion.inference_beta", "0x1"),
        ("perfusion.inference_beta", " 0.7"),
        ("perfusion.inference_tau", "1e999"),
    ],
)
def test_invalid_metadata_values(make_concept: ConceptFactory, key: str, value: str) -> None:
    concept = make_concept()
    with pytest.raises(pf.FormatError) as raised:
        pf.Concept(metadata={**concept.metadata, key: value}, tensors=concept.tensors)
    assert raised.value.code == "INVALID_FIELD"
    assert key in raised.value.message


def test_required_metadata_missing(make_concept: ConceptFactory) -> None:
    concept = make_concept()
    for key in ("perfusion.superclass", "modelspec.date", "perfusion.inference_tau"):
        metadata = {k: v for k, v in concept.metadata.items() if k != key}
        with pytest.raises(pf.FormatError) as raised:
            pf.Concept(metadata=metadata, tensors=concept.tensors)
        assert raised.value.code == "MISSING_FIELD"
        assert key in raised.value.message


def test_training_summary_must_be_a_json_object(make_concept: ConceptFactory) -> None:
    assert make_concept(training={"steps": 400}).training == {"steps": 400}
    assert _code(make_concept, extra_metadata={"perfusion.training": "[1, 2]"}) == "INVALID_FIELD"
