"""Checks shared by the runtime tests: K and V captured from a real attention call, the paper's
equation evaluated independently in float64 numpy, and concepts shaped like trained ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import perfusion_format as pf
import perfusion_runtime as pr

PROMPT = "a photo of a {} on a table"


#: Float32 rounding steps (ε) by which two batchings of the same captions may move one element of
#: a text encoding, relative to the largest |element| (seen on a 2-core AMD EPYC: under one; the
#: rest is headroom for other CPU models).
ENCODING_STEPS = 16


def covariance_tolerance(
    encodings: torch.Tensor | np.ndarray, stored_float32: bool = False
) -> float:
    """The absolute tolerance between two covariances C = mean_t e_t e_tᵀ of the same tokens
    whose float32 encodings come from different batchings of the text encoder.

    The text encoder is not batch-invariant on a CPU: 2 captions and 5 run matrix products of
    other shapes, whose kernels (picked by the BLAS per shape and per CPU model) sum in another
    order, and an encoding element moves by a few rounding steps of the largest element
    s = max |e| (``encodings``: any encodings of those captions; padding included, which only
    raises s). If every element is off by at most r·s, r = ``ENCODING_STEPS``·ε, every entry of
    C is off by at most mean_t(|Δe_td|·|e_te| + |e_td|·|Δe_te|) ≤ 2·r·s². ``stored_float32``: both
    sides were also rounded to float32 once, ≤ ε/2·|C| ≤ ε/2·s² each. With s ≈ 4 this is about
    5e-5, while one token too many moves C by up to s²/N (N tokens); in test_covariance.py's
    captions (N = 37) an extra padding token moves it by 0.05, a thousand times more.
    """
    if isinstance(encodings, torch.Tensor):
        s = float(encodings.detach().abs().max())
    else:
        s = float(np.abs(encodings).max())
    eps = float(np.finfo(np.float32).eps)
    return (2 * ENCODING_STEPS + (1 if stored_float32 else 0)) * eps * s * s


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class Captured:
    """Keys and values [B, T, m] that one attention call fed to scaled_dot_product_attention."""

    keys: np.ndarray
    values: np.ndarray


def capture_kv(attention: torch.nn.Module, encodings: torch.Tensor) -> Captured:
    """Run one attn2 module on random queries (in the module's dtype) and ``encodings`` (both
    moved to the module's device); return the K and V it used."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = F.scaled_dot_product_attention

    def recorder(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **kw: Any):
        seen.append((key, value))
        return original(query, key, value, **kw)

    weight = attention.to_q.weight
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(encodings.shape[0], 4, weight.shape[1], generator=generator)
    queries = queries.to(weight.device, weight.dtype)
    encodings = encodings.to(weight.device)
    F.scaled_dot_product_attention = recorder
    try:
        with torch.no_grad():
            attention(queries, encoder_hidden_states=encodings)
    finally:
        F.scaled_dot_product_attention = original
    assert len(seen) == 1
    key, value = seen[0]

    def merge(t: torch.Tensor) -> np.ndarray:  # [B, heads, T, hd] -> [B, T, heads·hd]
        return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], -1).double().cpu().numpy()

    return Captured(merge(key), merge(value))


def expected_kv(
    weights: tuple[np.ndarray, np.ndarray],
    encodings: np.ndarray,
    concepts: list[tuple[pf.Concept, float, float]],
    path: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Appendix B's equation in float64, from the files' vectors and the layer's W_k, W_v."""
    w_k, w_v = weights
    e = encodings.astype(np.float64)
    keys, values = e @ w_k.T, e @ w_v.T
    for concept, beta, tau in concepts:
        target = concept.target_input.astype(np.float64)
        u = concept.gate_direction.astype(np.float64)
        s = (e @ u) / (target @ u)
        gate = sigmoid((s - beta) / tau)
        o_k = w_k @ concept.superclass_input.astype(np.float64)
        o_v = concept.value_targets[path].astype(np.float64)
        keys += -s[..., None] * (w_k @ target) + gate[..., None] * o_k
        values += -s[..., None] * (w_v @ target) + gate[..., None] * o_v
    return keys, values


def layer_weights(attention: torch.nn.Module) -> tuple[np.ndarray, np.ndarray]:
    return (
        attention.to_k.weight.detach().double().cpu().numpy(),
        attention.to_v.weight.detach().double().cpu().numpy(),
    )


def token_position(pipe: Any, prompt: str, word_id: int) -> int:
    ids = pipe.tokenizer(prompt, padding="max_length", max_length=77).input_ids
    return ids.index(word_id)


def trained_like_concept(
    pipe: Any, token: str, superclass: str, seed: int, prompt: str = PROMPT
) -> pf.Concept:
    """A concept whose i* is exactly the encoding of ``token`` in ``prompt`` (as training's EMA
    converges to), i_s the superclass's encoding there, random embedding and value targets."""
    rng = np.random.default_rng(seed)
    layout = pr.pipeline_layout(pipe)
    embeddings = {
        name: rng.standard_normal((1, width)).astype(np.float32) * 0.5
        for name, width in layout.text_encoders
    }
    value_targets = {path: rng.standard_normal(m) for path, m in layout.layers}
    common = {
        "name": superclass,
        "token": token,
        "superclass": superclass,
        "family": layout.family,
        "base_fingerprint": pr.pipeline_fingerprint(pipe, layout.layers),
        "embeddings": embeddings,
        "value_targets": value_targets,
        "created": "2026-11-25T00:00:00Z",
    }
    superclass_id = pr.prompts.superclass_token_ids(pipe, superclass)["tokenizer"]
    position = token_position(pipe, prompt.format(superclass), superclass_id)
    superclass_input = pr.encode_prompts(pipe, [prompt.format(superclass)])[0][0, position]
    draft = pf.create_concept(
        **common,
        target_input=superclass_input.numpy(),
        gate_direction=superclass_input.numpy(),
        superclass_input=superclass_input.numpy(),
    )
    with pr.apply(pipe, [draft]):  # the concept token's encoding depends on its embedding only
        target = pr.encode_prompts(pipe, [prompt.format(token)])[0][0, position]
    covariance = pr.build_covariance(pipe)
    return pf.create_concept(
        **common,
        target_input=target.numpy(),
        gate_direction=pr.covariance.gate_direction(covariance, target).numpy(),
        superclass_input=superclass_input.numpy(),
    )


def attention_modules(pipe: Any) -> dict[str, torch.nn.Module]:
    return {path: pipe.unet.get_submodule(path) for path, _ in pr.pipeline_layout(pipe).layers}


def check_all_layers(
    pipe: Any, prompt: str, concepts: list[tuple[pf.Concept, float, float]]
) -> torch.Tensor:
    """Assert every attn2 layer's K and V for ``prompt`` match the equation; return encodings."""
    encodings = pr.encode_prompts(pipe, [prompt])[0]
    for path, attention in attention_modules(pipe).items():
        got = capture_kv(attention, encodings)
        keys, values = expected_kv(layer_weights(attention), encodings.numpy(), concepts, path)
        scale = max(1.0, np.abs(values).max(), np.abs(keys).max())
        np.testing.assert_allclose(got.keys, keys, rtol=0, atol=1e-5 * scale, err_msg=path)
        np.testing.assert_allclose(got.values, values, rtol=0, atol=1e-5 * scale, err_msg=path)
    return encodings
