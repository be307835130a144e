"""The per-layer K/V cache (perfusion_runtime.kv_cache): a generation computes each layer's edited
keys and values once, gives the images recomputing gives, and every change the cache is keyed on
— prompt, prompt_embeds, in-place writes, gates, weights, LoRA scales and merges, dtype — makes
it compute them afresh. Real tiny pipelines; a counting spy wraps the real edit."""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from perfusion_checks import PROMPT, trained_like_concept
from tiny_pipelines import build_pipeline

import perfusion_format as pf
import perfusion_runtime as pr
from perfusion_runtime.edit import LayerEdit
from perfusion_runtime.kv_cache import KVCache

STEPS = 4

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def generate(pipe: Any, **kwargs: Any) -> np.ndarray:
    kwargs.setdefault("prompt", PROMPT.format("<teddy>"))
    return pipe(
        num_inference_steps=STEPS,
        height=32,
        width=32,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    ).images


@pytest.fixture(scope="module")
def sd1() -> tuple[Any, pf.Concept]:
    pipe = build_pipeline("sd-1")
    return pipe, trained_like_concept(pipe, "<teddy>", "teddy", seed=1)


@pytest.fixture
def edit_calls(monkeypatch: pytest.MonkeyPatch) -> Counter[tuple[str, int]]:
    """Counts calls of the real ``LayerEdit.keys`` / ``LayerEdit.values``, per (kind, edit)."""
    calls: Counter[tuple[str, int]] = Counter()
    for kind in ("keys", "values"):
        original = getattr(LayerEdit, kind)

        def spy(self: LayerEdit, *args: Any, _kind: str = kind, _original: Any = original) -> Any:
            calls[(_kind, id(self))] += 1
            return _original(self, *args)

        monkeypatch.setattr(LayerEdit, kind, spy)
    return calls


def caches(pipe: Any) -> list[KVCache]:
    processors = pipe.unet.attn_processors.values()
    return [
        p.cache
        for p in processors
        if isinstance(p, pr.PerfusionAttnProcessor) and p.cache is not None
    ]


@pytest.mark.parametrize("kind", ["sd-1", "sdxl"])
def test_cached_generation_matches_recomputing(kind: str) -> None:
    pipe = build_pipeline(kind)
    teddy = trained_like_concept(pipe, "<teddy>", "teddy", seed=1)
    with pr.apply(pipe, [teddy], kv_cache=False):
        recomputed = generate(pipe)
    with pr.apply(pipe, [teddy]):
        cached = generate(pipe)
        hits = sum(cache.hits for cache in caches(pipe))
        misses = sum(cache.misses for cache in caches(pipe))
    layers = len(pr.pipeline_layout(pipe).layers)
    assert (misses, hits) == (2 * layers, 2 * layers * (STEPS - 1))
    np.testing.assert_allclose(cached, recomputed, rtol=0, atol=1e-5)
    assert np.abs(cached - generate(pipe)).max() > 1e-3  # the concept shows in the image


def test_the_edit_runs_once_per_layer_per_generation(sd1, edit_calls) -> None:
    pipe, teddy = sd1
    layers = len(pr.pipeline_layout(pipe).layers)
    with pr.apply(pipe, [teddy]):
        generate(pipe)
        assert len(edit_calls) == 2 * layers
        assert set(edit_calls.values()) == {1}
        generate(pipe)  # a new call encodes the prompt again: a new tensor, computed again
        assert set(edit_calls.values()) == {2}
    edit_calls.clear()
    with pr.apply(pipe, [teddy], kv_cache=False):
        generate(pipe)
        assert set(edit_calls.values()) == {STEPS}


def test_cache_entries_go_with_the_encodings_and_with_remove(sd1) -> None:
    pipe, teddy = sd1
    handle = pr.apply(pipe, [teddy])
    encodings = pr.encode_prompts(pipe, [PROMPT.format("<teddy>")])[0]
    unet_call(pipe, encodings)
    assert all(len(cache) == 2 for cache in caches(pipe))
    del encodings
    gc.collect()
    assert all(len(cache) == 0 for cache in caches(pipe))  # nothing held once they are freed
    generate(pipe)
    gc.collect()
    assert all(len(cache) == 0 for cache in caches(pipe))  # nor after a generation
    processors = caches(pipe)
    kept = pr.encode_prompts(pipe, [PROMPT.format("<teddy>")])[0]
    unet_call(pipe, kept)
    assert all(len(cache) == 2 for cache in processors)
    handle.remove()
    assert processors and all(len(cache) == 0 for cache in processors)


# --------------------------------------------------------------------------------------------
# Invalidation: after each change, the cached path equals a recomputation and differs from
# what was cached before the change (a stale entry would fail the first check).
# --------------------------------------------------------------------------------------------


def unet_call(pipe: Any, encodings: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """One UNet step on fixed latents, as tools that drive the UNet themselves do."""
    latents = torch.randn(encodings.shape[0], 4, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return pipe.unet(latents, 500, encoder_hidden_states=encodings, **kwargs).sample


@pytest.fixture
def applied(sd1) -> Iterator[tuple[Any, pr.PerfusionHandle, torch.Tensor]]:
    pipe, teddy = sd1
    state = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    encodings = pr.encode_prompts(pipe, [PROMPT.format("<teddy>"), "a <teddy> at sea"])[0]
    with pr.apply(pipe, [teddy]) as handle:
        yield pipe, handle, encodings
    pipe.unload_lora_weights()
    pipe.unet.load_state_dict(state)


def check_invalidated(
    pipe: Any,
    handle: pr.PerfusionHandle,
    encodings: torch.Tensor,
    change: Callable[[], Any],
    moves: bool = True,
    **kwargs: Any,
) -> None:
    """``change()`` between two UNet calls on the same encodings tensor must not be missed
    (``moves``: and it changes the output, so a stale entry would be seen)."""
    unet_call(pipe, encodings, **kwargs)
    before = unet_call(pipe, encodings, **kwargs)  # served from the cache
    assert sum(cache.hits for cache in caches(pipe)) > 0
    change()
    after = unet_call(pipe, encodings, **kwargs)
    handle.clear_cache()
    recomputed = unet_call(pipe, encodings, **kwargs)
    torch.testing.assert_close(after, recomputed, rtol=0, atol=1e-5)
    if moves:
        assert (after - before).abs().max() > 1e-3, "the change did not move the output"


def test_in_place_write_to_the_encodings(applied) -> None:
    pipe, handle, encodings = applied
    check_invalidated(pipe, handle, encodings, lambda: encodings[:, 5:9].mul_(-1.0))


def test_set_gate(applied) -> None:
    pipe, handle, encodings = applied
    check_invalidated(pipe, handle, encodings, lambda: handle.set_gate("<teddy>", beta=0.2))


def test_to_k_weights_written_in_place(applied) -> None:
    pipe, handle, encodings = applied

    def scale_keys() -> None:
        with torch.no_grad():
            for path, _ in pr.pipeline_layout(pipe).layers:
                pipe.unet.get_submodule(path).to_k.weight.mul_(3.0)

    check_invalidated(pipe, handle, encodings, scale_keys)


def test_load_state_dict(applied) -> None:
    pipe, handle, encodings = applied
    other = build_pipeline("sd-1", seed=7).unet.state_dict()
    check_invalidated(pipe, handle, encodings, lambda: pipe.unet.load_state_dict(other))


def kv_lora(pipe: Any, seed: int) -> dict[str, torch.Tensor]:
    """A rank-4 LoRA on every attn2 to_k / to_v, in diffusers' PEFT key format."""
    rng = torch.Generator().manual_seed(seed)
    lora = {}
    for path, m in pr.pipeline_layout(pipe).layers:
        for projection in ("to_k", "to_v"):
            prefix = f"unet.{path}.{projection}"
            lora[f"{prefix}.lora_A.weight"] = torch.randn(4, 32, generator=rng)
            lora[f"{prefix}.lora_B.weight"] = torch.randn(m, 4, generator=rng)
    return lora


def test_lora_loaded_scaled_fused_and_disabled(applied) -> None:
    pipe, handle, encodings = applied
    check_invalidated(
        pipe, handle, encodings, lambda: pipe.load_lora_weights(kv_lora(pipe, 1), "one")
    )
    # the same UNet call at another LoRA scale (diffusers scales the layers during the call)
    unet_call(pipe, encodings)
    full = unet_call(pipe, encodings)
    half = unet_call(pipe, encodings, cross_attention_kwargs={"scale": 0.5})
    handle.clear_cache()
    torch.testing.assert_close(
        half, unet_call(pipe, encodings, cross_attention_kwargs={"scale": 0.5}), rtol=0, atol=1e-5
    )
    assert (half - full).abs().max() > 1e-3
    check_invalidated(pipe, handle, encodings, lambda: pipe.set_adapters(["one"], [0.3]))
    pipe.load_lora_weights(kv_lora(pipe, 2), "two")
    check_invalidated(pipe, handle, encodings, lambda: pipe.set_adapters(["one", "two"]))
    check_invalidated(pipe, handle, encodings, pipe.disable_lora)
    check_invalidated(pipe, handle, encodings, pipe.enable_lora)
    # fusing writes weight.data (no version counter moves); the merged list is in the key
    check_invalidated(pipe, handle, encodings, lambda: pipe.fuse_lora(lora_scale=0.5))
    # unfusing keeps the fused scale (diffusers): the same function from other weights
    check_invalidated(pipe, handle, encodings, pipe.unfuse_lora, moves=False)


def test_a_hooked_projection_is_recomputed_every_call(applied) -> None:
    pipe, _, encodings = applied
    seen = []
    path = pr.pipeline_layout(pipe).layers[0][0]
    hook = pipe.unet.get_submodule(path).to_v.register_forward_hook(lambda *_: seen.append(1))
    try:
        for _ in range(3):
            unet_call(pipe, encodings)
    finally:
        hook.remove()
    assert len(seen) == 3


def test_new_prompt_and_new_prompt_embeds(sd1, edit_calls) -> None:
    pipe, teddy = sd1
    with pr.apply(pipe, [teddy]) as handle:
        first = generate(pipe)
        other = generate(pipe, prompt="a <teddy> sailing on a boat")
        handle.clear_cache()
        again = generate(pipe, prompt="a <teddy> sailing on a boat")
        np.testing.assert_allclose(other, again, rtol=0, atol=1e-5)
        assert np.abs(other - first).max() > 1e-3
        embeds = pr.encode_prompts(pipe, ["a <teddy> in a garden", "a red car"])[0]
        images = [
            generate(pipe, prompt=None, prompt_embeds=embeds[i : i + 1], guidance_scale=1.0)
            for i in range(2)
        ]
        handle.clear_cache()
        again = generate(pipe, prompt=None, prompt_embeds=embeds[1:2], guidance_scale=1.0)
        np.testing.assert_allclose(images[1], again, rtol=0, atol=1e-5)
        assert np.abs(images[1] - images[0]).max() > 1e-3


def test_autocast_with_the_same_encodings(applied) -> None:
    pipe, handle, encodings = applied
    unet_call(pipe, encodings)
    unet_call(pipe, encodings)
    seen = {}
    path = pr.pipeline_layout(pipe).layers[0][0]
    attention = pipe.unet.get_submodule(path)
    hook = attention.register_forward_hook(lambda _m, _i, out: seen.setdefault("out", out))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cached = unet_call(pipe, encodings)
        handle.clear_cache()
        recomputed = unet_call(pipe, encodings)
    hook.remove()
    assert seen["out"].dtype == torch.bfloat16  # K and V were projected under autocast
    torch.testing.assert_close(cached, recomputed, rtol=0, atol=1e-5)


def test_dtype_move() -> None:
    pipe = build_pipeline("sd-1")
    teddy = trained_like_concept(pipe, "<teddy>", "teddy", seed=1)
    with pr.apply(pipe, [teddy]):
        generate(pipe)
        pipe.to(torch.float64)
        wide = generate(pipe)
    with pr.apply(pipe, [teddy], kv_cache=False):
        np.testing.assert_allclose(wide, generate(pipe), rtol=0, atol=1e-9)


def test_autograd_is_never_served_from_the_cache(applied) -> None:
    pipe, _, encodings = applied
    latents = torch.randn(2, 4, 16, 16)
    encodings = encodings.clone().requires_grad_()  # K and V are in the graph
    first = pipe.unet(latents, 500, encoder_hidden_states=encodings).sample
    second = pipe.unet(latents, 500, encoder_hidden_states=encodings).sample
    (first + second).sum().backward()
    assert sum(cache.hits + cache.misses for cache in caches(pipe)) == 0
    assert encodings.grad is not None and encodings.grad.abs().max() > 0  # K/V in the graph
