"""Applying and removing concepts on real (tiny) diffusers pipelines: reversibility, gates,
refusals, composition with LoRA and textual inversion, dtypes, and concepts from scratch."""

from __future__ import annotations

import gc
import itertools
import weakref
from typing import Any

import numpy as np
import pytest
import torch
from concept_factory import VECTORS
from perfusion_checks import (
    PROMPT,
    capture_kv,
    check_all_layers,
    covariance_tolerance,
    expected_kv,
    token_position,
    trained_like_concept,
)
from tiny_pipelines import build_pipeline

import perfusion_format as pf
import perfusion_runtime as pr
from perfusion_runtime.tokens import _COPIES


def generate(pipe: Any, prompt: str, seed: int = 0) -> np.ndarray:
    return pipe(
        prompt,
        num_inference_steps=2,
        height=32,
        width=32,
        output_type="np",
        generator=torch.Generator().manual_seed(seed),
    ).images


def snapshot(pipe: Any) -> dict[str, Any]:
    """Identities and sizes of everything apply() touches."""
    state: dict[str, Any] = {
        "processors": {k: id(v) for k, v in pipe.unet.attn_processors.items()},
        "patched": sorted({"encode_prompt", "_perfusion_handle"} & set(pipe.__dict__)),
    }
    for encoder, tokenizer in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
        if getattr(pipe, encoder, None) is not None:
            state[encoder] = id(getattr(pipe, encoder).get_input_embeddings())
            state[tokenizer] = (id(getattr(pipe, tokenizer)), len(getattr(pipe, tokenizer)))
    return state


def _kind(pipe: Any) -> str:
    return "sdxl" if getattr(pipe, "text_encoder_2", None) is not None else "sd-1"


@pytest.fixture(scope="module", params=["sd-1", "sdxl"])
def world(request: pytest.FixtureRequest) -> tuple[Any, pf.Concept, pf.Concept]:
    pipe = build_pipeline(request.param)
    return (
        pipe,
        trained_like_concept(pipe, "<teddy>", "teddy", seed=1),
        trained_like_concept(pipe, "<teapot>", "teapot", seed=2),
    )


def test_remove_restores_the_pipeline_bit_for_bit(world) -> None:
    pipe, teddy, teapot = world
    fresh = build_pipeline(_kind(pipe))
    prompt = "a photo of a <teddy> and a <teapot>"
    never_applied = generate(fresh, prompt)
    before = snapshot(pipe)
    np.testing.assert_array_equal(generate(pipe, prompt), never_applied)
    handle = pr.apply(pipe, [teddy, teapot], global_locking=True)
    with_concepts = generate(pipe, prompt)
    assert not np.array_equal(with_concepts, never_applied)
    handle.remove()
    handle.remove()  # idempotent
    assert not handle.active
    assert snapshot(pipe) == before
    np.testing.assert_array_equal(generate(pipe, prompt), never_applied)


def test_apply_and_remove_a_hundred_times_leaks_nothing(world) -> None:
    pipe, teddy, teapot = world
    before = snapshot(pipe)
    handles = []
    for index in range(100):
        handle = pr.apply(pipe, [teddy] if index % 2 else [teddy, teapot])
        handle.remove()
        handles.append(weakref.ref(handle))
        del handle
    gc.collect()
    assert snapshot(pipe) == before
    assert all(ref() is None for ref in handles)
    assert len(_COPIES) <= 2  # one cached tokenizer copy per tokenizer at most


def test_context_manager_and_sources(world, tmp_path) -> None:
    pipe, teddy, teapot = world
    path = tmp_path / "teddy.perfusion.safetensors"
    pf.save(teddy, path)
    before = snapshot(pipe)
    with pr.apply(pipe, [str(path), pf.dumps(teapot)]) as handle:
        assert handle.tokens == ("<teddy>", "<teapot>")
        assert handle.gate("<teddy>") == pf.Gate(0.7, 0.15)
    assert snapshot(pipe) == before
    with pr.apply(pipe, path) as handle:
        assert handle.tokens == ("<teddy>",)


def test_set_gate_moves_the_concept_monotonically(world) -> None:
    pipe, teddy, _ = world
    prompt = PROMPT.format("<teddy>")
    with pr.apply(pipe, [teddy]) as handle:
        encodings = pr.encode_prompts(pipe, [prompt])[0]
        position = token_position(pipe, prompt, len(pipe.tokenizer) - 1)
        path, _ = pr.pipeline_layout(pipe).layers[0]
        attention = pipe.unet.get_submodule(path)
        o_v = teddy.value_targets[path]
        weights = (
            attention.to_k.weight.double().detach().cpu().numpy(),
            attention.to_v.weight.double().detach().cpu().numpy(),
        )
        along, images = [], []
        for beta in (1.2, 0.9, 0.7, 0.5, 0.3):
            handle.set_gate("<teddy>", beta=beta)
            value = capture_kv(attention, encodings).values[0, position]
            expected = expected_kv(weights, encodings.numpy(), [(teddy, beta, 0.15)], path)[1]
            np.testing.assert_allclose(value, expected[0, position], atol=1e-4)
            along.append(float(value @ o_v / np.linalg.norm(o_v)))
            images.append(generate(pipe, prompt))
        assert all(b > a for a, b in itertools.pairwise(along))
        distance = [float(np.abs(image - images[0]).mean()) for image in images]
        assert all(b > a for a, b in itertools.pairwise(distance)), distance
        handle.set_gate("<teddy>", beta=1.2)
        np.testing.assert_array_equal(generate(pipe, prompt), images[0])


def test_refusals_leave_the_pipeline_untouched(world) -> None:
    pipe, teddy, teapot = world
    before = snapshot(pipe)
    other_base = build_pipeline(_kind(pipe), seed=7)
    foreign = trained_like_concept(other_base, "<dog>", "dog", seed=3)
    same_token = pf.create_concept(
        **{**_arguments(teapot), "token": "<teddy>"}, created="2026-11-25T00:00:00Z"
    )
    in_vocabulary = pf.create_concept(
        **{**_arguments(teapot), "token": "teapot"}, created="2026-11-25T00:00:00Z"
    )
    cases: list[tuple[Any, str]] = [
        ([VECTORS / "sd1-fp16.perfusion.safetensors"], "FAMILY_MISMATCH"),
        ([teddy, foreign], "BASE_MISMATCH"),
        ([teddy, same_token], "DUPLICATE_TOKEN"),
        ([in_vocabulary], "DUPLICATE_TOKEN"),
        ([b"\x01\x02"], "TRUNCATED"),
        ([VECTORS / "invalid" / "tampered-tensor.perfusion.safetensors"], "SIGNATURE_INVALID"),
    ]
    for sources, code in cases:
        with pytest.raises(pf.PerfusionError) as raised:
            pr.apply(pipe, sources)
        assert raised.value.code == code
        assert snapshot(pipe) == before
    with pytest.raises(pr.PerfusionRuntimeError) as raised:
        pr.apply(pipe, [teddy], tau=0.0)
    assert raised.value.code == "INVALID_GATE"
    with pytest.warns(UserWarning, match="made for base"):
        handle = pr.apply(pipe, [foreign], allow_base_mismatch=True)
    with pytest.raises(pr.PerfusionRuntimeError) as raised:
        pr.apply(pipe, [teddy])
    assert raised.value.code == "ALREADY_APPLIED"
    for call, code in [
        (lambda: handle.set_gate("<cat>", beta=0.5), "UNKNOWN_CONCEPT"),
        (lambda: handle.set_gate("<dog>", tau=-1.0), "INVALID_GATE"),
        (lambda: handle.set_gate("<dog>", beta=float("inf")), "INVALID_GATE"),
    ]:
        with pytest.raises(pr.PerfusionRuntimeError) as raised:
            call()
        assert raised.value.code == code
    handle.remove()
    assert snapshot(pipe) == before


def test_every_code_has_a_category() -> None:
    by_category = {
        category: {str(code) for code in pr.RuntimeErrorCode if code.category is category}
        for category in pr.ErrorCategory
    }
    assert by_category[pr.ErrorCategory.INPUT] == {
        "NO_IMAGES",
        "INVALID_IMAGE",
        "MASK_MISMATCH",
        "INVALID_TRAINING_CONFIG",
        "INVALID_CHECKPOINT",
    }
    assert all(by_category.values())
    error = pr.PerfusionRuntimeError(pr.RuntimeErrorCode.INVALID_GATE, "τ must be > 0")
    assert (error.code, error.category) == ("INVALID_GATE", pr.ErrorCategory.CALL)


def _arguments(concept: pf.Concept) -> dict[str, Any]:
    return {
        "name": concept.name,
        "token": concept.token,
        "superclass": concept.superclass,
        "family": concept.family.name,
        "base_fingerprint": concept.base_fingerprint,
        "embeddings": concept.embeddings,
        "target_input": concept.target_input,
        "gate_direction": concept.gate_direction,
        "superclass_input": concept.superclass_input,
        "value_targets": concept.value_targets,
    }


def test_custom_concept_for_another_shape_is_refused() -> None:
    sd1, sd2 = build_pipeline("sd-1"), build_pipeline("sd-2")
    concept = pr.new_concept(
        sd1,
        token="<teddy>",
        superclass="teddy",
        covariance=pr.build_covariance(sd1, ["a photo of a teddy"] * 40),
    )
    with pytest.raises(pr.PerfusionRuntimeError) as raised:
        pr.apply(sd2, [concept])
    assert raised.value.code == "LAYER_MISMATCH"


def test_composes_with_lora_and_textual_inversion() -> None:
    pipe = build_pipeline("sd-1")
    teddy = trained_like_concept(pipe, "<teddy>", "teddy", seed=1)
    rng = torch.Generator().manual_seed(5)
    lora = {}
    for path, m in pr.pipeline_layout(pipe).layers:
        for projection in ("to_k", "to_v"):
            prefix = f"unet.{path}.{projection}"
            lora[f"{prefix}.lora_A.weight"] = torch.randn(4, 32, generator=rng) * 0.1
            lora[f"{prefix}.lora_B.weight"] = torch.randn(m, 4, generator=rng) * 0.1
    pipe.load_lora_weights(lora)
    ti_vector = torch.randn(32, generator=rng)
    pipe.load_textual_inversion(
        {"<ti>": ti_vector}, token="<ti>", tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder
    )

    def effective(attention: torch.nn.Module, projection: str) -> np.ndarray:
        layer = getattr(attention, projection)
        (adapter,) = layer.lora_A.keys()
        delta = layer.lora_B[adapter].weight @ layer.lora_A[adapter].weight
        weight = layer.base_layer.weight + layer.scaling[adapter] * delta
        return weight.double().detach().cpu().numpy()

    prompt = "a photo of a <teddy> and a <ti>"
    with pr.apply(pipe, [teddy]):
        encodings = pr.encode_prompts(pipe, [prompt])[0]
        for path, _ in pr.pipeline_layout(pipe).layers:
            attention = pipe.unet.get_submodule(path)
            weights = (effective(attention, "to_k"), effective(attention, "to_v"))
            got = capture_kv(attention, encodings)
            keys, values = expected_kv(weights, encodings.numpy(), [(teddy, 0.7, 0.15)], path)
            np.testing.assert_allclose(got.keys, keys, atol=1e-4)
            np.testing.assert_allclose(got.values, values, atol=1e-4)
        # the textual-inversion token still reads its own embedding, the concept token its own
        embedded = {}
        hook = pipe.text_encoder.get_input_embeddings().register_forward_hook(
            lambda _m, _i, out: embedded.setdefault("out", out)
        )
        ids = pipe.tokenizer(
            prompt, padding="max_length", max_length=77, return_tensors="pt"
        ).input_ids
        pipe.text_encoder(ids.to(pipe.text_encoder.device))
        hook.remove()
        ti_id, teddy_id = pipe.tokenizer.convert_tokens_to_ids(["<ti>", "<teddy>"])
        row = embedded["out"][0].cpu()
        torch.testing.assert_close(row[ids[0].tolist().index(ti_id)], ti_vector)
        np.testing.assert_allclose(
            row[ids[0].tolist().index(teddy_id)].detach().numpy(),
            teddy.embeddings["text_encoder"][0],
            atol=1e-6,
        )
    assert "<ti>" in pipe.tokenizer.get_vocab() and "<teddy>" not in pipe.tokenizer.get_vocab()


def test_bfloat16_pipeline_keeps_its_dtype_with_float32_gate_math() -> None:
    pipe = build_pipeline("sd-1")
    teddy = trained_like_concept(pipe, "<teddy>", "teddy", seed=1)
    pipe.to(torch.bfloat16)
    with pr.apply(pipe, [teddy]) as handle:
        image = generate(pipe, PROMPT.format("<teddy>"))
        assert np.isfinite(image).all()
        encodings = pr.encode_prompts(pipe, [PROMPT.format("<teddy>")])[0]
        encodings = encodings.to(pipe.device, torch.bfloat16)
        attention = pipe.unet.get_submodule(pr.pipeline_layout(pipe).layers[0][0])
        seen = {}
        hook = attention.to_v.register_forward_hook(lambda _m, _i, out: seen.setdefault("v", out))
        queries = torch.randn(1, 4, 32, dtype=torch.bfloat16).to(pipe.device)
        with torch.no_grad():
            attention(queries, encoder_hidden_states=encodings)
        hook.remove()
        assert seen["v"].dtype == torch.bfloat16
        assert handle._concepts.inputs(encodings).scores.dtype == torch.float32


def test_new_concept_is_initialised_as_the_paper_says() -> None:
    pipe = build_pipeline("sdxl")
    captions = pr.default_captions()[:40]
    covariance = pr.build_covariance(pipe, captions)
    concept = pr.new_concept(pipe, token="<teddy>", superclass="teddy", covariance=covariance)
    teddy_id = pipe.tokenizer.convert_tokens_to_ids("teddy</w>")
    for name in ("text_encoder", "text_encoder_2"):
        row = getattr(pipe, name).get_input_embeddings().weight[teddy_id].detach().cpu().numpy()
        np.testing.assert_array_equal(concept.embeddings[name][0], row)
    encodings = pr.encode_prompts(pipe, ["a photo of a teddy"])[0][0]
    i_s = encodings[token_position(pipe, "a photo of a teddy", teddy_id)].numpy()
    np.testing.assert_allclose(concept.superclass_input, i_s, atol=1e-6)
    np.testing.assert_array_equal(concept.target_input, concept.superclass_input)
    c = covariance.numpy()
    ridge = 1e-4 * np.diag(c).mean()
    np.testing.assert_allclose(
        (c + ridge * np.eye(len(c))) @ concept.gate_direction, i_s, atol=1e-4
    )
    for path, _ in concept.layers:
        w_v = pipe.unet.get_submodule(path).to_v.weight.detach().double().cpu().numpy()
        np.testing.assert_allclose(concept.value_targets[path], w_v @ i_s, atol=1e-5)
    assert concept.base_fingerprint == pr.pipeline_fingerprint(pipe, concept.layers)
    with pytest.raises(pr.PerfusionRuntimeError) as raised:
        pr.new_concept(pipe, token="<x>", superclass="teddybear", covariance=covariance)
    assert raised.value.code == "SUPERCLASS_NOT_ONE_TOKEN"
    with pytest.raises(pr.PerfusionRuntimeError) as raised:
        pr.new_concept(pipe, token="<x>", superclass="teddy", covariance=torch.eye(3))
    assert raised.value.code == "INVALID_COVARIANCE"


def test_build_covariance_matches_a_token_by_token_sum() -> None:
    pipe = build_pipeline("sd-1")
    captions = ["a photo of a cat", "a red car on a beach", "the sky"]
    total, count, encodings = np.zeros((32, 32)), 0, []
    for caption in captions:
        length = len(pipe.tokenizer(caption).input_ids)  # start + words + end, no padding
        with torch.no_grad():
            embeds = pipe.encode_prompt(caption, pipe.device, 1, False)[0][0, :length]
        embeds = embeds.double().cpu().numpy()
        total += embeds.T @ embeds
        count += length
        encodings.append(embeds)
    # one caption at a time here, two at a time there: float32 rounding apart, see the helper
    np.testing.assert_allclose(
        pr.build_covariance(pipe, captions, batch_size=2).numpy(),
        total / count,
        rtol=0,
        atol=covariance_tolerance(np.concatenate(encodings)),
    )


def test_patch_cross_attention_on_a_bare_unet(world) -> None:
    pipe, teddy, _ = world
    unet = pipe.unet
    originals = dict(unet.attn_processors)
    edits = pr.build_edits(teddy).layers
    assert sorted(edits) == [path for path, _ in pr.pipeline_layout(pipe).layers]
    patch = pr.patch_cross_attention(unet, edits)
    assert all(
        isinstance(unet.get_submodule(path).processor, pr.PerfusionAttnProcessor) for path in edits
    )
    check_all_layers(pipe, PROMPT.format("teddy"), [(teddy, 0.7, 0.15)])
    patch.remove()
    assert dict(unet.attn_processors) == originals


def test_img2img_sibling_shares_the_components(world) -> None:
    from diffusers import AutoPipelineForImage2Image

    pipe, teddy, _ = world
    sibling = AutoPipelineForImage2Image.from_pipe(pipe)
    sibling.set_progress_bar_config(disable=True)
    start = np.random.default_rng(0).random((1, 32, 32, 3)).astype(np.float32)

    def run() -> np.ndarray:
        return sibling(
            PROMPT.format("<teddy>"),
            image=start,
            strength=0.9,
            num_inference_steps=2,
            output_type="np",
            generator=torch.Generator().manual_seed(0),
        ).images

    without = run()
    with pr.apply(sibling, [teddy]):
        check_all_layers(sibling, PROMPT.format("<teddy>"), [(teddy, 0.7, 0.15)])
        assert not np.array_equal(run(), without)
    np.testing.assert_array_equal(run(), without)
