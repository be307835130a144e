"""Importing perfusion-pytorch and ChenDarYen checkpoints: the converted concept, applied by the
runtime, gives the K and V the source computes — checked against the paper's equation evaluated
here from the source file's own tensors — and unsafe or foreign files are refused cleanly."""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from perfusion_checks import capture_kv, token_position
from perfusion_sources import (
    BLOCK,
    DIFFUSERS_ORDER,
    LDM_NAMES,
    POSITION,
    PROMPT,
    SUPERCLASS,
    Source,
    make_source,
    save_chendaryen,
    save_perfusion_pytorch,
    source_kv,
)
from tiny_pipelines import build_pipeline

import perfusion_format as pf
import perfusion_runtime as pr
from perfusion_runtime.layer_names import ldm_to_diffusers

BETA, TAU = 0.7, 0.15
TOKEN = "<teddy>"
FINGERPRINT = "sha256:" + "ab" * 32

#: SD 1.x / 2.x: the 16 cross-attention blocks by LDM name, written out (not computed).
SD_LDM_NAMES = {
    "input_blocks.1.1": "down_blocks.0.attentions.0",
    "input_blocks.2.1": "down_blocks.0.attentions.1",
    "input_blocks.4.1": "down_blocks.1.attentions.0",
    "input_blocks.5.1": "down_blocks.1.attentions.1",
    "input_blocks.7.1": "down_blocks.2.attentions.0",
    "input_blocks.8.1": "down_blocks.2.attentions.1",
    "middle_block.1": "mid_block.attentions.0",
    "output_blocks.3.1": "up_blocks.1.attentions.0",
    "output_blocks.4.1": "up_blocks.1.attentions.1",
    "output_blocks.5.1": "up_blocks.1.attentions.2",
    "output_blocks.6.1": "up_blocks.2.attentions.0",
    "output_blocks.7.1": "up_blocks.2.attentions.1",
    "output_blocks.8.1": "up_blocks.2.attentions.2",
    "output_blocks.9.1": "up_blocks.3.attentions.0",
    "output_blocks.10.1": "up_blocks.3.attentions.1",
    "output_blocks.11.1": "up_blocks.3.attentions.2",
}


class Evil:
    """Unpickling this creates ``path``: the proof that a loader ran code from the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.path), "w"))


@pytest.fixture(scope="module")
def pipe() -> Any:
    return build_pipeline("sd-1")


@pytest.fixture(scope="module")
def sources(pipe: Any) -> dict[str, Source]:
    """perfusion-pytorch values (one target per layer) and ChenDarYen's (one per position)."""
    return {
        "perfusion-pytorch": make_source(pipe, 1, rows=1),
        "chendaryen": make_source(pipe, 2, 77),
    }


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def applied_kv(pipe: Any, concept: pf.Concept) -> tuple[np.ndarray, dict[str, Any]]:
    """Encodings [T, d] of PROMPT with the concept's token, and each layer's captured K and V."""
    with pr.apply(pipe, [concept], beta=BETA, tau=TAU):
        prompt = PROMPT.format(concept.token)
        assert token_position(pipe, prompt, len(pipe.tokenizer) - 1) == POSITION
        encodings = pr.encode_prompts(pipe, [prompt])[0]
        captured = {
            layer: capture_kv(pipe.unet.get_submodule(layer + BLOCK), encodings)
            for layer in LDM_NAMES.values()
        }
    return encodings[0].double().numpy(), captured


def assert_close(got: np.ndarray, expected: np.ndarray, what: str) -> None:
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * scale, err_msg=what)


# -- layer names -------------------------------------------------------------------------------


def test_ldm_names_map_to_the_family_table() -> None:
    mapped = [ldm_to_diffusers(f"{ldm}.transformer_blocks.0.attn2") for ldm in SD_LDM_NAMES]
    assert mapped == [f"{path}.transformer_blocks.0.attn2" for path in SD_LDM_NAMES.values()]
    assert mapped == [path for path, _ in pf.get_family("sd-1").layers]
    prefixed = "model.diffusion_model.output_blocks.3.1.transformer_blocks.1.attn2"
    assert ldm_to_diffusers(prefixed) == "up_blocks.1.attentions.0.transformer_blocks.1.attn2"
    # SDXL uses the same scheme: input_blocks.4 is the first attention of down_blocks.1
    assert ldm_to_diffusers("input_blocks.4.1.transformer_blocks.9.attn2") == (
        "down_blocks.1.attentions.0.transformer_blocks.9.attn2"
    )
    for other in ("input_blocks.3.1.transformer_blocks.0.attn2", "input_blocks.0.1", "x.attn2"):
        assert ldm_to_diffusers(other) is None


# -- K and V reproduced ------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["ldm", "diffusers"])
def test_perfusion_pytorch_concept_reproduces_the_source(
    pipe: Any, sources: dict[str, Source], tmp_path: Path, order: str
) -> None:
    source = sources["perfusion-pytorch"]
    layers = list(LDM_NAMES.values()) if order == "ldm" else DIFFUSERS_ORDER
    path = save_perfusion_pytorch(source, tmp_path / "teddy.pt", layers)
    concept = pr.import_checkpoint(path, family="custom", superclass=SUPERCLASS, pipe=pipe)
    assert concept.token == TOKEN
    assert concept.superclass_input is not None  # keys locked: i_s recovered from o_k = W_k i_s
    assert concept.training["source"] == "perfusion-pytorch"
    np.testing.assert_array_equal(concept.embeddings["text_encoder"][0], source.embedding)
    encodings, captured = applied_kv(pipe, concept)
    for layer, got in captured.items():
        keys, values = source_kv(source, pipe, layer, encodings, BETA, TAU)
        assert_close(got.keys[0], keys, layer)
        assert_close(got.values[0], values, layer)


def test_chendaryen_concept_reproduces_the_source_at_the_concept_token(
    pipe: Any, sources: dict[str, Source], tmp_path: Path
) -> None:
    """Exact at the concept token; elsewhere each position's own target row is replaced by the
    concept token's (the documented choice), so K and V are the equation with that row."""
    source = sources["chendaryen"]
    path = save_chendaryen(source, tmp_path / "teddy.ckpt")
    concept = pr.import_checkpoint(path, family="custom", superclass=SUPERCLASS, pipe=pipe)
    assert concept.key_targets is not None and concept.superclass_input is None
    assert concept.training == {
        "source": "chendaryen",
        "source_digest": pf.content_digest(path.read_bytes()),
        "position": POSITION,
        "steps": 400,
    }
    one_row = dataclasses.replace(
        source,
        key_targets={layer: rows[[POSITION]] for layer, rows in source.key_targets.items()},
        value_targets={layer: rows[[POSITION]] for layer, rows in source.value_targets.items()},
    )
    encodings, captured = applied_kv(pipe, concept)
    for layer, got in captured.items():
        keys, values = source_kv(source, pipe, layer, encodings, BETA, TAU)
        assert_close(got.keys[0, POSITION], keys[POSITION], layer)
        assert_close(got.values[0, POSITION], values[POSITION], layer)
        keys, values = source_kv(one_row, pipe, layer, encodings, BETA, TAU)
        assert_close(got.keys[0], keys, layer)
        assert_close(got.values[0], values, layer)


def test_sd1_checkpoints_import_without_the_model(tmp_path: Path) -> None:
    """Full-size sd-1 checkpoints (random values): layers land on the family's table by name
    (ChenDarYen) or by module order (perfusion-pytorch), keys stay explicit, u = C⁻¹ i*."""
    rng = np.random.default_rng(3)
    family = pf.get_family("sd-1")
    d = family.text_dim
    root = rng.standard_normal((d, d)) / np.sqrt(d)
    c_inv = (root @ root.T + np.eye(d)).astype(np.float32)
    target = rng.standard_normal(d).astype(np.float32)
    embedding = rng.standard_normal((1, d)).astype(np.float32)
    rows = 2
    keys = {p: rng.standard_normal((rows, m)).astype(np.float32) for p, m in family.layers}
    values = {p: rng.standard_normal((rows, m)).astype(np.float32) for p, m in family.layers}
    block = ".transformer_blocks.0.attn2"
    chendaryen = {
        "C_inv": torch.tensor(c_inv),
        "target_input": torch.tensor(target),
        "embedding": {
            "string_to_token": {"*": 265},
            "string_to_param": {"*": torch.tensor(embedding)},
        },
        "target_output": {
            f"model.diffusion_model.{ldm}{block}.to_{kind}.target_output": torch.tensor(
                targets[diffusers + block]
            )
            for ldm, diffusers in SD_LDM_NAMES.items()
            for kind, targets in (("k", keys), ("v", values))
        },
    }
    torch.save(chendaryen, tmp_path / "c.ckpt")
    modules = []
    for path, _ in family.layers:  # the LDM UNet's module order is the family's table order
        modules += [
            [torch.tensor(target[None]), torch.tensor(targets[path][:1])]
            for targets in (keys, values)
        ]
    package = {
        "embed_params": torch.tensor(embedding),
        "key_value_params": modules,
        "C_inv": torch.tensor(c_inv),
    }
    torch.save(package, tmp_path / "p.pt")
    for name, row in (("c.ckpt", 1), ("p.pt", 0)):
        concept = pr.import_checkpoint(
            tmp_path / name,
            family="sd-1",
            superclass=SUPERCLASS,
            base_fingerprint=FINGERPRINT,
            position=row,
        )
        assert (concept.family.name, concept.base_fingerprint) == ("sd-1", FINGERPRINT)
        assert concept.key_targets is not None
        for path, _ in family.layers:
            np.testing.assert_array_equal(concept.key_targets[path], keys[path][row])
            np.testing.assert_array_equal(concept.value_targets[path], values[path][row])
        np.testing.assert_allclose(
            concept.gate_direction, c_inv.astype(np.float64) @ target, rtol=1e-6, atol=1e-6
        )


# -- choices and refusals ----------------------------------------------------------------------


def test_inconsistent_key_targets_stay_explicit(
    pipe: Any, sources: dict[str, Source], tmp_path: Path
) -> None:
    rng = np.random.default_rng(5)
    source = sources["perfusion-pytorch"]
    noisy = dataclasses.replace(
        source,
        key_targets={
            k: v + 0.1 * rng.standard_normal(v.shape) for k, v in source.key_targets.items()
        },
    )
    path = save_perfusion_pytorch(noisy, tmp_path / "noisy.pt")
    concept = pr.import_checkpoint(path, family="custom", superclass=SUPERCLASS, pipe=pipe)
    assert concept.superclass_input is None
    for layer in LDM_NAMES.values():
        np.testing.assert_allclose(
            concept.key_targets[layer + BLOCK], noisy.key_targets[layer][0], rtol=1e-6
        )


def test_options_and_metadata(pipe: Any, sources: dict[str, Source], tmp_path: Path) -> None:
    path = save_perfusion_pytorch(sources["perfusion-pytorch"], tmp_path / "teddy.pt")
    concept = pr.import_checkpoint(
        path,
        family="custom",
        superclass=SUPERCLASS,
        pipe=pipe,
        token="<my-teddy>",
        name="My teddy",
        dtype="BF16",
        base_fingerprint=pr.pipeline_fingerprint(pipe, pr.pipeline_layout(pipe).layers),
    )
    assert (concept.name, concept.token, concept.superclass, concept.dtype) == (
        "My teddy",
        "<my-teddy>",
        SUPERCLASS,
        "BF16",
    )
    assert pf.loads(pf.dumps(concept)).weights_digest == concept.weights_digest
    with pytest.raises(pr.PerfusionRuntimeError) as error:
        pr.import_checkpoint(
            path, family="custom", superclass=SUPERCLASS, pipe=pipe, base_fingerprint=FINGERPRINT
        )
    assert error.value.code == "BASE_MISMATCH"


def expect(code: str, path: Path, **options: Any) -> str:
    arguments = {"family": "custom", "superclass": SUPERCLASS, **options}
    with pytest.raises(pf.PerfusionError) as error:
        pr.import_checkpoint(path, **arguments)
    assert error.value.code == code, error.value
    assert "\n" not in str(error.value)
    return error.value.message


def test_a_pickle_with_a_foreign_global_is_refused_unexecuted(pipe: Any, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"C_inv": torch.eye(2), "embed_params": Evil(marker), "key_value_params": []}, path)
    message = expect("IMPORT_UNSAFE", path, pipe=pipe)
    assert "open" in message
    assert not marker.exists()
    legacy = tmp_path / "evil.pkl"  # a bare pickle, not torch's zip container
    legacy.write_bytes(pickle.dumps({"C_inv": Evil(marker)}, protocol=2))
    expect("IMPORT_UNSAFE", legacy, pipe=pipe)
    newer = tmp_path / "evil4.pkl"  # protocol 4 opcodes: torch.save never writes them
    newer.write_bytes(pickle.dumps({"C_inv": Evil(marker)}, protocol=4))
    expect("IMPORT_INVALID", newer, pipe=pipe)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the proof is real: an ordinary unpickler runs it
    assert marker.exists()


def test_files_of_another_layout_are_refused(
    pipe: Any, sources: dict[str, Source], tmp_path: Path
) -> None:
    cases: dict[str, Any] = {
        "state_dict.pt": {"state_dict": {"weight": torch.zeros(2)}},
        "tensor.pt": torch.zeros(3),
        "no-embedding.pt": {"embed_params": None, "key_value_params": [], "C_inv": torch.eye(32)},
    }
    for name, content in cases.items():
        torch.save(content, tmp_path / name)
        expect("IMPORT_INVALID", tmp_path / name, pipe=pipe)
    (tmp_path / "text.pt").write_text("not a checkpoint")
    expect("IMPORT_INVALID", tmp_path / "text.pt", pipe=pipe)
    (tmp_path / "empty.pt").write_bytes(b"")
    expect("IMPORT_INVALID", tmp_path / "empty.pt", pipe=pipe)

    path = save_chendaryen(sources["chendaryen"], tmp_path / "c.ckpt")
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["embedding"]["string_to_param"] = {"*": torch.zeros(2, 32)}
    torch.save(checkpoint, tmp_path / "two-vectors.ckpt")
    assert "num_vectors_per_token" in expect(
        "IMPORT_INVALID", tmp_path / "two-vectors.ckpt", pipe=pipe
    )
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["target_output"][
        "input_blocks.1.1.transformer_blocks.0.attn1.to_k.target_output"
    ] = torch.zeros(77, 32)
    torch.save(checkpoint, tmp_path / "attn1.ckpt")
    expect("IMPORT_INVALID", tmp_path / "attn1.ckpt", pipe=pipe)
    expect("IMPORT_INVALID", tmp_path / "c.ckpt", pipe=pipe, position=77)

    package = torch.load(save_perfusion_pytorch(sources["perfusion-pytorch"], tmp_path / "p.pt"))
    package["embed_params"] = package["embed_params"].repeat(2, 1)
    package["key_value_params"] = [
        [i.repeat(2, 1), o.repeat(2, 1)] for i, o in package["key_value_params"]
    ]
    torch.save(package, tmp_path / "two.pt")
    assert "2 concepts" in expect("IMPORT_INVALID", tmp_path / "two.pt", pipe=pipe)
    assert (
        pr.import_checkpoint(
            tmp_path / "two.pt", family="custom", superclass=SUPERCLASS, pipe=pipe, concept_index=1
        ).training["concept_index"]
        == 1
    )


def test_wrong_family_or_missing_model_is_refused(
    pipe: Any, sources: dict[str, Source], tmp_path: Path
) -> None:
    path = save_chendaryen(sources["chendaryen"], tmp_path / "c.ckpt")
    assert "custom" in expect("FAMILY_MISMATCH", path, family="sd-1", pipe=pipe)
    message = expect("FAMILY_MISMATCH", path, family="sd-1", base_fingerprint=FINGERPRINT)
    assert "768" in message
    expect("FAMILY_MISMATCH", path, family="sdxl", base_fingerprint=FINGERPRINT)
    expect("IMPORT_NEEDS_MODEL", path, base_fingerprint=FINGERPRINT)  # custom: layers unknown
    expect("IMPORT_NEEDS_MODEL", path, family="sd-1")
    assert "C⁻¹" in expect("FAMILY_MISMATCH", path, pipe=build_pipeline("sd-2"))  # d = 48

    checkpoint = torch.load(path, weights_only=False)
    del checkpoint["target_output"]["middle_block.1.transformer_blocks.0.attn2.to_v.target_output"]
    torch.save(checkpoint, tmp_path / "no-mid.ckpt")
    expect("LAYER_MISMATCH", tmp_path / "no-mid.ckpt", pipe=pipe)
    package = torch.load(save_perfusion_pytorch(sources["perfusion-pytorch"], tmp_path / "p.pt"))
    package["key_value_params"] = package["key_value_params"][:-2]
    torch.save(package, tmp_path / "five-layers.pt")
    expect("LAYER_MISMATCH", tmp_path / "five-layers.pt", pipe=pipe)
