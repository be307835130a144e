"""The runtime computes the paper's equation: K and V of every attn2 layer, captured from the
real attention call, against the equation evaluated here in float64 numpy from the concept file
and the layer's weights — an implementation independent of perfusion_runtime.edit.

    s(e) = eᵀu / i*ᵀu        W'e = W e − s·W i* + σ((s − β)/τ)·o*     o_k = W_k i_s
    several concepts (appendix B): W'e = W(e − Σ sₙ i*ₙ) + Σ σ((sₙ − βₙ)/τₙ)·o*ₙ
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from perfusion_checks import (
    PROMPT,
    attention_modules,
    capture_kv,
    check_all_layers,
    expected_kv,
    layer_weights,
    sigmoid,
    token_position,
    trained_like_concept,
)
from tiny_pipelines import build_pipeline

import perfusion_format as pf
import perfusion_runtime as pr


@pytest.fixture(scope="module", params=["sd-1", "sd-2", "sdxl"])
def world(request: pytest.FixtureRequest) -> tuple[Any, pf.Concept, pf.Concept]:
    pipe = build_pipeline(request.param)
    teddy = trained_like_concept(pipe, "<teddy>", "teddy", seed=1)
    teapot = trained_like_concept(pipe, "<teapot>", "teapot", seed=2)
    return pipe, teddy, teapot


def test_concept_token_follows_the_equation(world) -> None:
    pipe, teddy, _ = world
    with pr.apply(pipe, [teddy]):
        encodings = check_all_layers(pipe, PROMPT.format("<teddy>"), [(teddy, 0.7, 0.15)])
        position = token_position(pipe, PROMPT.format("<teddy>"), len(pipe.tokenizer) - 1)
        # at e = i*, s = 1 and the value is ≈ σ((1 − β)/τ)·o_v
        np.testing.assert_allclose(encodings[0, position].numpy(), teddy.target_input, atol=1e-5)
        for path, attention in attention_modules(pipe).items():
            value = capture_kv(attention, encodings).values[0, position]
            o_v = teddy.value_targets[path]
            np.testing.assert_allclose(value, sigmoid((1 - 0.7) / 0.15) * o_v, atol=1e-4)


def test_prompt_without_trigger_follows_the_equation(world) -> None:
    pipe, teddy, _ = world
    with pr.apply(pipe, [teddy], beta=0.6, tau=0.2):
        check_all_layers(pipe, "a photo of a cat in a garden", [(teddy, 0.6, 0.2)])


def test_two_concepts_compose_per_appendix_b(world) -> None:
    pipe, teddy, teapot = world
    with pr.apply(pipe, [teddy, teapot]) as handle:
        handle.set_gate("<teapot>", beta=0.5, tau=0.1)
        prompt = "a photo of a <teddy> sailing in a <teapot>"
        check_all_layers(pipe, prompt, [(teddy, 0.7, 0.15), (teapot, 0.5, 0.1)])


def test_explicit_key_targets_follow_the_equation(world) -> None:
    """A concept carrying o_k per layer (as imported ones do) gives the same keys as key
    locking when o_k = W_k i_s."""
    pipe, teddy, _ = world
    modules = attention_modules(pipe)
    key_targets = {
        path: layer_weights(m)[0] @ teddy.superclass_input.astype(np.float64)
        for path, m in modules.items()
    }
    explicit = pf.create_concept(
        name=teddy.name,
        token=teddy.token,
        superclass=teddy.superclass,
        family=teddy.family.name,
        base_fingerprint=teddy.base_fingerprint,
        embeddings={k: v for k, v in teddy.embeddings.items()},
        target_input=teddy.target_input,
        gate_direction=teddy.gate_direction,
        key_targets=key_targets,
        value_targets=teddy.value_targets,
        created="2026-11-25T00:00:00Z",
    )
    with pr.apply(pipe, [explicit]):
        check_all_layers(pipe, PROMPT.format("<teddy>"), [(teddy, 0.7, 0.15)])


def test_functional_core_on_plain_tensors() -> None:
    """LayerEdit with a plain nn.Linear (no diffusers) against the equation."""
    rng = np.random.default_rng(4)
    d, m, n = 12, 7, 3
    w_k, w_v = rng.standard_normal((m, d)), rng.standard_normal((m, d))
    vectors, concepts = [], []
    for index in range(n):
        target = rng.standard_normal(d)
        direction = target + 0.3 * rng.standard_normal(d)
        superclass, o_v = rng.standard_normal(d), rng.standard_normal(m)
        beta, tau = 0.5 + 0.1 * index, 0.1 + 0.05 * index
        vectors.append(
            pr.ConceptVectors(
                token=f"<c{index}>",
                target_input=torch.tensor(target, dtype=torch.float32),
                gate_direction=torch.tensor(direction, dtype=torch.float32),
                superclass_input=torch.tensor(superclass, dtype=torch.float32),
                key_targets=None,
                value_targets={"layer": torch.tensor(o_v, dtype=torch.float32)},
                beta=beta,
                tau=tau,
            )
        )
        concepts.append((target, direction, superclass, o_v, beta, tau))
    edit = pr.LayerEdit(
        pr.ConceptSet(vectors), torch.stack([v.value_targets["layer"] for v in vectors])
    )
    to_k, to_v = torch.nn.Linear(d, m, bias=False), torch.nn.Linear(d, m, bias=False)
    to_k.weight.data = torch.tensor(w_k, dtype=torch.float32)
    to_v.weight.data = torch.tensor(w_v, dtype=torch.float32)
    e = rng.standard_normal((2, 5, d))
    e[0, 1] = concepts[0][0]  # one token exactly at i*₀
    encodings = torch.tensor(e, dtype=torch.float32)
    with torch.no_grad():
        keys, values = edit.keys(encodings, to_k).numpy(), edit.values(encodings, to_v).numpy()
    expected_k, expected_v = e @ w_k.T, e @ w_v.T
    for target, direction, superclass, o_v, beta, tau in concepts:
        s = (e @ direction) / (target @ direction)
        gate = sigmoid((s - beta) / tau)[..., None]
        expected_k += -s[..., None] * (w_k @ target) + gate * (w_k @ superclass)
        expected_v += -s[..., None] * (w_v @ target) + gate * o_v
    np.testing.assert_allclose(keys, expected_k, atol=1e-4)
    np.testing.assert_allclose(values, expected_v, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_pipeline_follows_the_equation_to_its_precision(dtype) -> None:
    """In a float16/bfloat16 pipeline the edit is added in the layer's dtype: K and V still match
    the equation, evaluated in float64 from the half-precision weights and encodings, to a few
    of that dtype's rounding steps (the edit term alone is ~σ·o_v, far larger)."""
    pipe = build_pipeline("sd-1")
    teddy = trained_like_concept(pipe, "<teddy>", "teddy", seed=1)
    pipe.to(dtype)
    prompt = "a photo of a <teddy> on a beach"
    with pr.apply(pipe, [teddy]):
        encodings = pr.encode_prompts(pipe, [prompt])[0].to(dtype)
        for path, attention in attention_modules(pipe).items():
            got = capture_kv(attention, encodings)
            exact = encodings.float().numpy()
            keys, values = expected_kv(layer_weights(attention), exact, [(teddy, 0.7, 0.15)], path)
            scale = max(1.0, np.abs(values).max(), np.abs(keys).max())
            tolerance = 8 * torch.finfo(dtype).eps * scale
            np.testing.assert_allclose(got.keys, keys, rtol=0, atol=tolerance, err_msg=path)
            np.testing.assert_allclose(got.values, values, rtol=0, atol=tolerance, err_msg=path)
            edit = sigmoid((1 - 0.7) / 0.15) * teddy.value_targets[path]
            assert np.abs(edit).max() > 10 * tolerance  # a missing edit could not pass
