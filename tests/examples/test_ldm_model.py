"""examples/ldm_model: a model written without diffusers (LDM-style spatial transformers with
their own attention class) carries concepts through the embedding API, and computes what the
diffusers path computes on the same weights — the text encodings with the trigger tokens, every
cross-attention layer's output, a changed gate, global locking — and K/V that match the paper's
equation computed here."""

from __future__ import annotations

import copy
import sys
from typing import Any

import numpy as np
import pytest
import torch
from concept_factory import REPO
from perfusion_checks import PROMPT, expected_kv, trained_like_concept
from tiny_pipelines import build_pipeline

import perfusion_runtime as pr

sys.path.insert(0, str(REPO / "examples" / "ldm_model"))
from carry_concepts import base_fingerprint, carry_concepts
from ldm_blocks import LDMTransformers, SpatialTransformer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
GATE = (0.7, 0.15)  # the inference gate trained_like_concept's files carry


def ldm_copy(unet: torch.nn.Module) -> LDMTransformers:
    """The UNet's spatial transformers rebuilt with ldm_blocks at their LDM positions, same
    weights (loaded with strict=True: every tensor has its counterpart)."""
    blocks = {}
    attn2 = [name for name, _ in unet.named_modules() if name.endswith("attn2")]
    for path in sorted({name.split(".transformer_blocks.")[0] for name in attn2}):
        transformer = unet.get_submodule(path)
        first = transformer.transformer_blocks[0]
        inner = first.attn1.to_q.weight.shape[0]
        block = SpatialTransformer(
            channels=transformer.norm.num_channels,
            heads=first.attn1.heads,
            dim_head=inner // first.attn1.heads,
            context_dim=first.attn2.to_k.weight.shape[1],
            depth=len(transformer.transformer_blocks),
            groups=transformer.norm.num_groups,
            use_linear=transformer.config.use_linear_projection,
        )
        block.load_state_dict(transformer.state_dict(), strict=True)
        position = pr.diffusers_to_ldm(f"{path}.transformer_blocks.0.attn2")
        assert position is not None
        blocks[position.split(".transformer_blocks.")[0]] = block
    return LDMTransformers(blocks).eval()


@pytest.fixture(scope="module", params=["sd-1", "sd-2"])
def world(request: pytest.FixtureRequest) -> dict[str, Any]:
    pipe = build_pipeline(request.param)
    return {
        "pipe": pipe,
        "model": ldm_copy(pipe.unet),
        "concepts": [
            trained_like_concept(pipe, "<teddy>", "teddy", seed=1),
            trained_like_concept(pipe, "<teapot>", "teapot", seed=2),
        ],
    }


def tool_encodings(world: dict[str, Any], table: torch.nn.Embedding, ids: dict[str, int], prompt):
    """The encodings a tool computes: its own copy of the text encoder given the expanded
    embedding table, its tokenizer taught the trigger tokens' ids."""
    pipe = world["pipe"]
    encoder = copy.deepcopy(pipe.text_encoder)
    encoder.set_input_embeddings(table)
    pieces = []
    for part in prompt.split(" "):
        if part in ids:
            pieces.append(ids[part])
        else:
            pieces += pipe.tokenizer(part, add_special_tokens=False).input_ids
    tokenizer = pipe.tokenizer
    body = [tokenizer.bos_token_id, *pieces, tokenizer.eos_token_id]
    body += [tokenizer.pad_token_id] * (tokenizer.model_max_length - len(body))
    with torch.no_grad():
        return encoder(torch.tensor([body]))[0]


def positions_of(pipe: Any) -> dict[str, str]:
    """diffusers transformer path → LDM position, for every layer of the pipeline."""
    positions = {}
    for path, _ in pr.pipeline_layout(pipe).layers:
        ldm = pr.diffusers_to_ldm(path)
        assert ldm is not None
        positions[path.split(".transformer_blocks.")[0]] = ldm.split(".transformer_blocks.")[0]
    return positions


def run_layers(pipe: Any, run: Any, encodings: torch.Tensor) -> dict:
    """Each transformer's output on a fixed random feature map: ``run(diffusers path, LDM
    position, features, encodings)``, by diffusers path."""
    outputs = {}
    for index, (path, position) in enumerate(positions_of(pipe).items()):
        channels = pipe.unet.get_submodule(path).norm.num_channels
        generator = torch.Generator().manual_seed(index)
        features = torch.randn(encodings.shape[0], channels, 4, 4, generator=generator)
        with torch.no_grad():
            outputs[path] = run(path, position, features, encodings)
    return outputs


def diffusers_layers(pipe: Any, encodings: torch.Tensor) -> dict:
    def run(path: str, _position: str, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return pipe.unet.get_submodule(path)(x, encoder_hidden_states=e).sample

    return run_layers(pipe, run, encodings)


def ldm_layers(world: dict[str, Any], encodings: torch.Tensor) -> dict:
    model = world["model"]
    return run_layers(world["pipe"], lambda _path, position, x, e: model(position, x, e), encodings)


def assert_close(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for path in expected:
        scale = float(expected[path].abs().max())
        torch.testing.assert_close(got[path], expected[path], rtol=0, atol=2e-5 * max(scale, 1.0))


def test_the_copy_is_the_same_model_before_any_concept(world) -> None:
    encodings = torch.randn(2, 77, world["pipe"].text_encoder.config.hidden_size)
    assert_close(ldm_layers(world, encodings), diffusers_layers(world["pipe"], encodings))
    for concept in world["concepts"]:
        assert base_fingerprint(world["model"], concept) == concept.base_fingerprint


def test_a_tool_computes_what_the_diffusers_path_computes(world) -> None:
    pipe, model, concepts = world["pipe"], world["model"], world["concepts"]
    prompt = "a photo of a <teddy> next to a <teapot>"
    unedited = torch.randn(1, 77, pipe.text_encoder.config.hidden_size)
    plain = ldm_layers(world, unedited)
    carried, table = carry_concepts(model, pipe.text_encoder.get_input_embeddings(), concepts)
    encodings = tool_encodings(world, table, carried.token_ids, prompt)
    with pr.apply(pipe, concepts) as handle:
        reference = pr.encode_prompts(pipe, [prompt])[0]
        torch.testing.assert_close(encodings, reference, rtol=0, atol=1e-5)
        assert_close(ldm_layers(world, encodings), diffusers_layers(pipe, encodings))
        # one way to name a concept: the same token changes the gate on both sides
        carried.edits.concepts.set_gate("<teapot>", beta=0.2)
        handle.set_gate("<teapot>", beta=0.2)
        assert_close(ldm_layers(world, encodings), diffusers_layers(pipe, encodings))
    carried.remove()
    assert all(type(model.get_submodule(p).to_k) is torch.nn.Linear for p in carried.edits.layers)
    # the original Linears are back: the same outputs as before, bit for bit
    again = ldm_layers(world, unedited)
    assert all(torch.equal(again[path], plain[path]) for path in plain)


def test_observed_kv_follow_the_equation(world) -> None:
    pipe, model, concepts = world["pipe"], world["model"], world["concepts"]
    carried, table = carry_concepts(model, pipe.text_encoder.get_input_embeddings(), concepts)
    try:
        encodings = tool_encodings(world, table, carried.token_ids, PROMPT.format("<teddy>"))
        with carried.patch.observe() as trace:
            ldm_layers(world, encodings)
            ldm_layers(world, encodings)  # served from the K/V cache, still observed
        hits = {path: layer.cache.hits for path, layer in carried.patch.installed.items()}
    finally:
        carried.remove()
    assert sorted(trace.keys) == sorted(carried.edits.layers)
    for position, keys in trace.keys.items():
        assert len(keys) == 2 and len(trace.values[position]) == 2
        assert hits[position] == 2  # the second run's K and V
        attention = model.get_submodule(position)
        weights = (
            attention.to_k.weight.detach().double().numpy(),
            attention.to_v.weight.detach().double().numpy(),
        )
        path = pr.ldm_to_diffusers(position)
        gates = [(concept, *GATE) for concept in concepts]
        want_k, want_v = expected_kv(weights, encodings.double().numpy(), gates, path)
        for got, want in ((keys[1], want_k), (trace.values[position][1], want_v)):
            scale = max(1.0, float(np.abs(want).max()))
            np.testing.assert_allclose(got.double().numpy(), want, rtol=0, atol=1e-5 * scale)


def test_global_locking_reads_keys_from_the_superclass_half(world) -> None:
    pipe, model, concepts = world["pipe"], world["model"], world["concepts"][:1]
    width = pipe.text_encoder.config.hidden_size
    doubled = torch.randn(2, 2 * 77, width, generator=torch.Generator().manual_seed(3))
    edits = pr.build_edits(concepts, layer_names="ldm")
    patch = pr.patch_cross_attention(model, edits.layers, global_locking=True)
    try:
        got = ldm_layers(world, doubled)
    finally:
        patch.remove()
    reference = pr.build_edits(concepts).layers
    unet_patch = pr.patch_cross_attention(pipe.unet, reference, global_locking=True)
    try:
        assert_close(got, diffusers_layers(pipe, doubled))
    finally:
        unet_patch.remove()


def test_a_concept_for_other_weights_is_refused_before_anything_changes(world) -> None:
    pipe, model, concepts = world["pipe"], world["model"], world["concepts"]
    other = build_pipeline("sd-1" if pipe.text_encoder.config.hidden_size == 48 else "sd-2", seed=7)
    foreign = trained_like_concept(other, "<cup>", "cup", seed=3)
    linears = {
        p: model.get_submodule(p).to_k for p in pr.build_edits(concepts, layer_names="ldm").layers
    }
    with pytest.raises(pr.PerfusionRuntimeError) as refused:
        carry_concepts(model, pipe.text_encoder.get_input_embeddings(), [concepts[0], foreign])
    assert refused.value.code in {"BASE_MISMATCH", "LAYER_MISMATCH"}
    assert {p: model.get_submodule(p).to_k for p in linears} == linears
