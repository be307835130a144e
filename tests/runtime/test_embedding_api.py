"""The embedding API for tools with their own model code (issue 17, part 3): layer names both
ways, ``build_edits``, one token naming a concept everywhere, ``patch_cross_attention``'s checks,
``observe``, and ``applied``/``unload`` for tools that lost the handle. The non-diffusers model
itself is tests/examples/test_ldm_model.py."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from concept_factory import build_concept
from perfusion_checks import PROMPT, capture_kv, expected_kv, layer_weights, trained_like_concept
from tiny_pipelines import build_pipeline

import perfusion_format as pf
import perfusion_runtime as pr

pytestmark = pytest.mark.usefixtures("one_torch_thread")
GATE = (0.7, 0.15)  # the inference gate trained_like_concept's files carry

#: SD 1.5's layers as the CompVis repository names them, written out by hand from its UNet
#: (input_blocks 1, 2 / 4, 5 / 7, 8 carry attention, output_blocks 3–11 do).
LDM_BY_HAND = {
    "down_blocks.0.attentions.0": "input_blocks.1.1",
    "down_blocks.0.attentions.1": "input_blocks.2.1",
    "down_blocks.1.attentions.0": "input_blocks.4.1",
    "down_blocks.1.attentions.1": "input_blocks.5.1",
    "down_blocks.2.attentions.0": "input_blocks.7.1",
    "down_blocks.2.attentions.1": "input_blocks.8.1",
    "mid_block.attentions.0": "middle_block.1",
    "up_blocks.1.attentions.0": "output_blocks.3.1",
    "up_blocks.1.attentions.2": "output_blocks.5.1",
    "up_blocks.2.attentions.1": "output_blocks.7.1",
    "up_blocks.3.attentions.0": "output_blocks.9.1",
    "up_blocks.3.attentions.2": "output_blocks.11.1",
}


@pytest.fixture(scope="module")
def world() -> tuple[Any, pf.Concept, pf.Concept]:
    pipe = build_pipeline("sd-1")
    return (
        pipe,
        trained_like_concept(pipe, "<teddy>", "teddy", seed=1),
        trained_like_concept(pipe, "<teapot>", "teapot", seed=2),
    )


def code_of(call: Any) -> str:
    with pytest.raises(pr.PerfusionRuntimeError) as refused:
        call()
    return str(refused.value.code)


# -- layer names -------------------------------------------------------------------------------


@pytest.mark.parametrize("block", ["transformer_blocks.0.attn2", "transformer_blocks.7.attn2"])
def test_layer_names_match_the_ldm_unet_written_by_hand(block: str) -> None:
    for diffusers, ldm in LDM_BY_HAND.items():
        assert pr.diffusers_to_ldm(f"{diffusers}.{block}") == f"{ldm}.{block}"
        assert pr.ldm_to_diffusers(f"{ldm}.{block}") == f"{diffusers}.{block}"


def test_layer_names_round_trip_for_every_family_and_refuse_what_cannot_exist() -> None:
    for family in ("sd-1", "sd-2", "sdxl"):
        for path, _ in pf.get_family(family).layers:
            ldm = pr.diffusers_to_ldm(path)
            assert ldm is not None and pr.ldm_to_diffusers(ldm) == path
    # one res block per level: down_blocks.1.attentions.0 is input_blocks.3 (1 + 1·2 + 0)
    assert pr.diffusers_to_ldm("down_blocks.1.attentions.0.transformer_blocks.0.attn2", 1) == (
        "input_blocks.3.1.transformer_blocks.0.attn2"
    )
    for impossible in (
        "down_blocks.0.attentions.2.transformer_blocks.0.attn2",  # a down level has n
        "up_blocks.0.attentions.3.transformer_blocks.0.attn2",  # an up level n + 1
        "mid_block.attentions.1.transformer_blocks.0.attn2",
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1",
        "x.attn2",
    ):
        assert pr.diffusers_to_ldm(impossible) is None


# -- build_edits -------------------------------------------------------------------------------


def test_build_edits_names_layers_either_way_and_keeps_the_concepts_order(world) -> None:
    pipe, teddy, teapot = world
    edits = pr.build_edits([teapot, teddy], beta=0.5)
    ldm = pr.build_edits([teapot, teddy], beta=0.5, layer_names="ldm")
    layers = [path for path, _ in pr.pipeline_layout(pipe).layers]
    assert sorted(edits.layers) == layers
    assert sorted(ldm.layers) == sorted(pr.diffusers_to_ldm(path) for path in layers)
    assert edits.tokens == ("<teapot>", "<teddy>")
    assert edits.superclasses == {"<teapot>": "teapot", "<teddy>": "teddy"}
    rows = edits.embeddings["text_encoder"]
    expected = np.concatenate([teapot.embeddings["text_encoder"], teddy.embeddings["text_encoder"]])
    np.testing.assert_array_equal(rows.numpy(), expected)
    assert edits.concepts.gate("<teddy>") == (0.5, teddy.inference_gate.tau)
    first = edits.layers[layers[0]]
    assert all(edit.concepts is edits.concepts for edit in edits.layers.values())
    # the LDM-named edit of a layer is the same edit as the diffusers-named one
    torch.manual_seed(0)
    encodings = torch.randn(1, 5, edits.concepts.text_dim)
    width = pr.pipeline_layout(pipe).layers[0][1]
    projection = torch.nn.Linear(edits.concepts.text_dim, width)
    twin = ldm.layers[pr.diffusers_to_ldm(layers[0])]
    with torch.no_grad():
        torch.testing.assert_close(
            twin.values(encodings, projection), first.values(encodings, projection)
        )


def test_build_edits_refuses_concepts_that_cannot_share_a_model(world) -> None:
    _, teddy, _ = world
    assert code_of(lambda: pr.build_edits([build_concept("sd-1"), build_concept("sd-2")])) == (
        "FAMILY_MISMATCH"
    )
    assert code_of(lambda: pr.build_edits([teddy, teddy])) == "DUPLICATE_TOKEN"
    assert code_of(lambda: pr.build_edits(teddy, tau=0.0)) == "INVALID_GATE"
    # with one res block per level, down_blocks.0.attentions.1 has no LDM name
    assert code_of(lambda: pr.build_edits(teddy, layer_names="ldm", layers_per_block=1)) == (
        "LAYER_MISMATCH"
    )
    with pytest.raises(ValueError, match="at least one concept"):
        pr.build_edits([])


def test_a_token_names_a_concept_in_the_concept_set_and_the_handle(world) -> None:
    pipe, teddy, teapot = world
    with pr.apply(pipe, [teddy, teapot]) as handle:
        concepts = handle.concepts
        version = concepts.version
        handle.set_gate("<teapot>", beta=0.3)
        assert concepts.gate("<teapot>") == (0.3, GATE[1])
        concepts.set_gate("<teddy>", tau=0.4)
        assert handle.gate("<teddy>") == pf.Gate(GATE[0], 0.4)
        assert concepts.version == version + 2
        assert code_of(lambda: concepts.set_gate("<cup>", beta=0.1)) == "UNKNOWN_CONCEPT"
        assert code_of(lambda: handle.set_gate("<teddy>", tau=-1.0)) == "INVALID_GATE"
        assert handle.gate("<teddy>") == pf.Gate(GATE[0], 0.4)


# -- patch_cross_attention -------------------------------------------------------------------


def test_patch_checks_every_path_before_changing_any(world) -> None:
    pipe, teddy, _ = world
    unet = pipe.unet
    originals = dict(unet.attn_processors)
    layers = pr.build_edits(teddy).layers
    some = next(iter(layers.values()))
    for bad in ("down_blocks.0.attentions.0.transformer_blocks.9.attn2", "conv_in"):
        assert code_of(lambda bad=bad: pr.patch_cross_attention(unet, {**layers, bad: some})) == (
            "LAYER_MISMATCH"
        )
        assert dict(unet.attn_processors) == originals
    patch = pr.patch_cross_attention(unet, layers)
    try:
        assert code_of(lambda: pr.patch_cross_attention(unet, layers)) == "ALREADY_APPLIED"
    finally:
        patch.remove()
    assert dict(unet.attn_processors) == originals


def test_observe_records_the_keys_and_values_attention_used(world) -> None:
    pipe, teddy, _ = world
    path = pr.pipeline_layout(pipe).layers[0][0]
    attention = pipe.unet.get_submodule(path)
    with pr.apply(pipe, [teddy]) as handle:
        encodings = pr.encode_prompts(pipe, [PROMPT.format("<teddy>")])[0]
        with handle.observe() as trace:
            used = capture_kv(attention, encodings)
        capture_kv(attention, encodings)  # after the block: not recorded
    assert list(trace.keys) == [path] and len(trace.keys[path]) == 1
    np.testing.assert_allclose(trace.keys[path][0].double().numpy(), used.keys, atol=1e-6)
    np.testing.assert_allclose(trace.values[path][0].double().numpy(), used.values, atol=1e-6)
    want_k, want_v = expected_kv(
        layer_weights(attention), encodings.double().numpy(), [(teddy, *GATE)], path
    )
    scale = max(1.0, float(np.abs(want_v).max()))
    np.testing.assert_allclose(used.keys, want_k, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(used.values, want_v, rtol=0, atol=1e-5 * scale)


# -- applied / unload --------------------------------------------------------------------------


def test_applied_and_unload_find_the_concepts_through_a_sibling(world) -> None:
    from diffusers import AutoPipelineForImage2Image

    pipe, teddy, teapot = world
    processors = dict(pipe.unet.attn_processors)
    tokenizer = pipe.tokenizer
    assert pr.applied(pipe) is None and pr.unload(pipe) is False
    handle = pr.apply(pipe, [teddy, teapot])
    sibling = AutoPipelineForImage2Image.from_pipe(pipe)
    assert pr.applied(pipe) is handle and pr.applied(sibling) is handle
    assert pr.applied(sibling).tokens == ("<teddy>", "<teapot>")
    assert pr.unload(sibling) is True
    assert not handle.active and pr.applied(pipe) is None and pr.applied(sibling) is None
    assert dict(pipe.unet.attn_processors) == processors and pipe.tokenizer is tokenizer
    assert pr.unload(pipe) is False
