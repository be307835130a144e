"""Concepts together with what diffusers users combine them with (issue 17, part 2), on the tiny
pipelines, on the CPU: LoRA (loaded before or after ``apply``, adapter weights, fuse/unfuse),
textual inversion, IP-Adapter, ControlNet, img2img/inpaint siblings, SDXL with ``prompt_embeds``,
compel, every compatible scheduler, ``callback_on_step_end``, ``torch.compile`` and accelerate's
CPU offload.

The yardstick is :class:`ReferenceProcessor`: the paper's equation written here, apart from the
runtime (s and g in float64, every projection called on its own), swapped onto the UNet in place
of the runtime's processors while the text side stays applied. "Composes" means: the runtime's
image equals the image the reference gives in the same state (LoRA scales, fused weights, IP
processors, scheduler, callback changes), and differs from the image without the concept or
without the other feature.

Where something cannot compose, the test asserts the refusal (a stable error code, the pipeline
unchanged); :mod:`perfusion_runtime.compat`'s pieces are also tested on their own at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch
from perfusion_checks import PROMPT, trained_like_concept
from tiny_pipelines import build_pipeline

import perfusion_format as pf
import perfusion_runtime as pr

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONCEPT_PROMPT = PROMPT.format("<teddy>")
PLAIN_PROMPT = PROMPT.format("teddy")
#: Images are in [0, 1]; the runtime and the reference round differently in float32 (one
#: projection of e − s·i* + g·i_s against three projections summed in float64).
IMAGE_ATOL = 2e-4
GATE = (0.7, 0.15)  # the inference gate trained_like_concept's files carry


def generate(pipe: Any, prompt: str | None = CONCEPT_PROMPT, steps: int = 2, **kwargs: Any):
    """A 32 px image (numpy, [1, 32, 32, 3]) with a fixed generator."""
    if prompt is not None:
        kwargs["prompt"] = prompt
    kwargs.setdefault("height", 32)
    kwargs.setdefault("width", 32)
    return pipe(
        num_inference_steps=steps,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    ).images


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_allclose(got, want, rtol=0, atol=IMAGE_ATOL)


def assert_differs(a: np.ndarray, b: np.ndarray) -> None:
    assert np.abs(a - b).max() > 20 * IMAGE_ATOL


# ------------------------------------------------------------------------------------------------
# The reference: the paper's equation, independently of the runtime
# ------------------------------------------------------------------------------------------------


class _ReferenceView:
    """An ``Attention`` module whose ``to_k``/``to_v`` give the edited keys and values."""

    def __init__(self, attention: torch.nn.Module, processor: ReferenceProcessor) -> None:
        self._attention = attention
        self._processor = processor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._attention, name)

    def to_k(self, encodings: torch.Tensor) -> torch.Tensor:
        return self._processor.edit(encodings, self._attention.to_k, keys=True)

    def to_v(self, encodings: torch.Tensor) -> torch.Tensor:
        return self._processor.edit(encodings, self._attention.to_v, keys=False)


class ReferenceProcessor:
    """Appendix B's W'e = W e − Σ sₙ W i*ₙ + Σ gₙ oₙ for one attn2 layer, wrapping the processor
    the runtime wrapped; o_k = W_k i_s (key locking), o_v from the file. ``gates`` (token → (β,
    τ)) is read at every call, so a test changes it where it changes the runtime's gate."""

    def __init__(
        self,
        inner: Any,
        path: str,
        concepts: list[pf.Concept],
        gates: dict[str, tuple[float, float]],
    ) -> None:
        self.inner, self.path, self.concepts, self.gates = inner, path, concepts, gates

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, *args, **kwargs):
        if encoder_hidden_states is None:
            return self.inner(attn, hidden_states, None, *args, **kwargs)
        view = _ReferenceView(attn, self)
        return self.inner(view, hidden_states, encoder_hidden_states, *args, **kwargs)

    def edit(self, encodings: torch.Tensor, project: Callable, keys: bool) -> torch.Tensor:
        def vector(array: np.ndarray) -> torch.Tensor:
            return torch.tensor(np.asarray(array, dtype=np.float64), device=encodings.device)

        def projected(array: np.ndarray) -> torch.Tensor:
            return project(vector(array)[None].to(encodings.dtype))[0].double()

        out = project(encodings).double()
        e = encodings.double()
        for concept in self.concepts:
            beta, tau = self.gates[concept.token]
            target, direction = vector(concept.target_input), vector(concept.gate_direction)
            s = (e @ direction) / (target @ direction)
            g = torch.sigmoid((s - beta) / tau)
            o = (
                projected(concept.superclass_input)
                if keys
                else vector(concept.value_targets[self.path])
            )
            out = out - s[..., None] * projected(concept.target_input) + g[..., None] * o
        return out.to(encodings.dtype)


def attn2_paths(pipe: Any) -> list[str]:
    return [path for path, _ in pr.pipeline_layout(pipe).layers]


def processors(pipe: Any) -> dict[str, Any]:
    """The UNet's processor objects by name (``…attn2.processor``)."""
    return dict(pipe.unet.attn_processors)


@contextmanager
def reference(
    pipe: Any,
    originals: dict[str, Any],
    concepts: list[pf.Concept],
    gates: dict[str, tuple[float, float]] | None = None,
) -> Iterator[dict[str, tuple[float, float]]]:
    """Swap :class:`ReferenceProcessor` (around ``originals``, the processors before ``apply``)
    onto every attn2 layer; the text side (tokenizer, embeddings) stays as it is. Yields the
    gates, which the caller may change."""
    gates = gates if gates is not None else {c.token: GATE for c in concepts}
    current = processors(pipe)
    swapped = dict(current)
    for path in attn2_paths(pipe):
        name = f"{path}.processor"
        swapped[name] = ReferenceProcessor(originals[name], path, concepts, gates)
    pipe.unet.set_attn_processor(swapped)
    try:
        yield gates
    finally:
        pipe.unet.set_attn_processor(current)


def against_reference(
    pipe: Any, originals: dict[str, Any], concepts: list[pf.Concept], **call: Any
) -> np.ndarray:
    """Generate with the runtime's processors, then with the reference's; assert they agree."""
    got = generate(pipe, **call)
    with reference(pipe, originals, concepts):
        want = generate(pipe, **call)
    assert_close(got, want)
    return got


# ------------------------------------------------------------------------------------------------
# Fixtures and builders
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teddy() -> pf.Concept:
    """A concept for ``build_pipeline("sd-1")`` (every fresh sd-1 pipeline has its weights)."""
    return trained_like_concept(build_pipeline("sd-1"), "<teddy>", "teddy", seed=1)


@pytest.fixture(scope="module")
def sdxl_teddy() -> pf.Concept:
    return trained_like_concept(build_pipeline("sdxl"), "<teddy>", "teddy", seed=1)


def lora_weights(pipe: Any, seed: int, scale: float = 0.1, rank: int = 4) -> dict:
    """A rank-``rank`` LoRA on every attn2 ``to_k``/``to_v`` (peft key layout)."""
    generator = torch.Generator().manual_seed(seed)
    d = pr.pipeline_layout(pipe).text_dim
    state = {}
    for path, m in pr.pipeline_layout(pipe).layers:
        for projection in ("to_k", "to_v"):
            prefix = f"unet.{path}.{projection}"
            state[f"{prefix}.lora_A.weight"] = torch.randn(rank, d, generator=generator) * scale
            state[f"{prefix}.lora_B.weight"] = torch.randn(m, rank, generator=generator) * scale
    return state


def outcome(call: Callable[[], Any]) -> str:
    """ "ok", or the code of the PerfusionError ``call`` raised."""
    try:
        result = call()
    except pf.PerfusionError as error:
        return str(error.code)
    if isinstance(result, pr.PerfusionHandle):
        result.remove()
    return "ok"


# ------------------------------------------------------------------------------------------------
# LoRA
# ------------------------------------------------------------------------------------------------


def test_lora_loaded_after_apply_composes_and_stays_after_remove(teddy) -> None:
    pipe, lora_only = build_pipeline("sd-1"), build_pipeline("sd-1")
    lora_only.load_lora_weights(lora_weights(pipe, seed=5), adapter_name="style")
    originals = processors(pipe)
    handle = pr.apply(pipe, [teddy])
    concept_only = generate(pipe)
    pipe.load_lora_weights(lora_weights(pipe, seed=5), adapter_name="style")
    with_lora = against_reference(pipe, originals, [teddy])
    assert_differs(with_lora, concept_only)
    handle.remove()
    np.testing.assert_array_equal(generate(pipe, PLAIN_PROMPT), generate(lora_only, PLAIN_PROMPT))


def test_lora_adapter_weights_and_scale_apply_from_the_next_call(teddy) -> None:
    pipe = build_pipeline("sd-1")
    pipe.load_lora_weights(lora_weights(pipe, seed=5), adapter_name="a")
    pipe.load_lora_weights(lora_weights(pipe, seed=6, scale=0.2), adapter_name="b")
    originals = processors(pipe)
    images = []
    with pr.apply(pipe, [teddy]):
        for weights in ([1.0, 0.0], [0.3, 1.0], [0.0, 0.0]):
            pipe.set_adapters(["a", "b"], adapter_weights=weights)
            images.append(against_reference(pipe, originals, [teddy]))
        pipe.set_adapters(["a", "b"], adapter_weights=[1.0, 1.0])
        scaled = against_reference(pipe, originals, [teddy], cross_attention_kwargs={"scale": 0.5})
    for index, image in enumerate(images):
        for other in (*images[index + 1 :], scaled):
            assert_differs(image, other)


def test_fuse_and_unfuse_lora_while_applied(teddy) -> None:
    pipe = build_pipeline("sd-1")
    pipe.load_lora_weights(lora_weights(pipe, seed=5, scale=0.3), adapter_name="a")
    originals = processors(pipe)
    with pr.apply(pipe, [teddy]):
        unfused = against_reference(pipe, originals, [teddy])
        pipe.fuse_lora(lora_scale=0.5)  # W + 0.5·ΔW, written into the weights
        fused = against_reference(pipe, originals, [teddy])
        pipe.unfuse_lora()  # back to the adapter, at the 0.5 scale diffusers fused it with
        unfused_again = against_reference(pipe, originals, [teddy])
    assert_differs(fused, unfused)
    assert_close(unfused_again, fused)  # the same W + 0.5·ΔW, merged or not


def test_fuse_lora_then_apply_decides_the_same_whatever_ran_before(teddy) -> None:
    seen, fresh = build_pipeline("sd-1"), build_pipeline("sd-1")
    pr.apply(seen, [teddy]).remove()  # fingerprints the unfused weights
    for pipe in (seen, fresh):
        pipe.load_lora_weights(lora_weights(pipe, seed=5, scale=1.0), adapter_name="a")
        pipe.fuse_lora()  # flips the signs of some to_k/to_v weights
    assert outcome(lambda: pr.apply(seen, [teddy])) == outcome(lambda: pr.apply(fresh, [teddy]))


# ------------------------------------------------------------------------------------------------
# Textual inversion
# ------------------------------------------------------------------------------------------------


def load_inversion(pipe: Any) -> torch.Tensor:
    vector = torch.randn(32, generator=torch.Generator().manual_seed(8))
    pipe.load_textual_inversion(
        {"<ti>": vector}, token="<ti>", tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder
    )
    return vector


def test_textual_inversion_loaded_before_apply_composes(teddy) -> None:
    pipe, inversion_only = build_pipeline("sd-1"), build_pipeline("sd-1")
    load_inversion(pipe)
    load_inversion(inversion_only)
    prompt = "a <ti> and a <teddy> on a table"
    originals = processors(pipe)
    with pr.apply(pipe, [teddy]):
        both = against_reference(pipe, originals, [teddy], prompt=prompt)
        assert_differs(both, generate(pipe, "a teddy and a <teddy> on a table"))
    # the inversion still works after remove, exactly as on a pipeline that never saw a concept
    np.testing.assert_array_equal(
        generate(pipe, "a <ti> on a table"), generate(inversion_only, "a <ti> on a table")
    )


def test_textual_inversion_while_applied_is_refused(teddy) -> None:
    pipe = build_pipeline("sd-1")
    with pr.apply(pipe, [teddy]):
        before = generate(pipe)
        with pytest.raises(pr.PerfusionRuntimeError) as raised:
            load_inversion(pipe)
        assert raised.value.code == "ALREADY_APPLIED"
        np.testing.assert_array_equal(generate(pipe), before)


# ------------------------------------------------------------------------------------------------
# IP-Adapter
# ------------------------------------------------------------------------------------------------

IMAGE_EMBED_DIM = 16


def ip_adapter_weights(pipe: Any, seed: int = 3) -> dict[str, dict[str, torch.Tensor]]:
    """A tiny IP-Adapter (image projection to 4 tokens; to_k_ip/to_v_ip per attn2 layer) in
    the layout ``load_ip_adapter`` reads, random init."""
    generator = torch.Generator().manual_seed(seed)
    d = pipe.unet.config.cross_attention_dim
    image_proj = {
        "proj.weight": torch.randn(4 * d, IMAGE_EMBED_DIM, generator=generator) * 0.3,
        "proj.bias": torch.zeros(4 * d),
        "norm.weight": torch.ones(d),
        "norm.bias": torch.zeros(d),
    }
    ip_adapter = {}
    key = 1  # diffusers numbers attn2 layers 1, 3, 5, … in attn_processors order
    for name in pipe.unet.attn_processors:
        if name.endswith("attn2.processor"):
            m = pipe.unet.get_submodule(name.removesuffix(".processor")).to_k.weight.shape[0]
            for projection in ("to_k_ip", "to_v_ip"):
                weight = torch.randn(m, d, generator=generator) * 0.3
                ip_adapter[f"{key}.{projection}.weight"] = weight
            key += 2
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def load_ip_adapter(pipe: Any) -> None:
    pipe.load_ip_adapter(
        ip_adapter_weights(pipe), subfolder="", weight_name="", image_encoder_folder=None
    )


#: Image embeddings as the pipeline wants them with guidance: [negative ‖ positive, 1 image, dim].
IMAGE_EMBEDS = [torch.randn(2, 1, IMAGE_EMBED_DIM, generator=torch.Generator().manual_seed(9))]


def test_ip_adapter_loaded_before_apply_composes(teddy) -> None:
    pipe, concept_only = build_pipeline("sd-1"), build_pipeline("sd-1")
    load_ip_adapter(pipe)
    ip_only = generate(pipe, ip_adapter_image_embeds=IMAGE_EMBEDS)
    originals = processors(pipe)
    with pr.apply(concept_only, [teddy]):
        concept_alone = generate(concept_only)
    with pr.apply(pipe, [teddy]):
        both = against_reference(pipe, originals, [teddy], ip_adapter_image_embeds=IMAGE_EMBEDS)
    assert_differs(both, ip_only)
    assert_differs(both, concept_alone)
    np.testing.assert_array_equal(generate(pipe, ip_adapter_image_embeds=IMAGE_EMBEDS), ip_only)


def test_ip_adapter_scale_set_while_applied_takes_effect(teddy) -> None:
    pipe, concept_only = build_pipeline("sd-1"), build_pipeline("sd-1")
    load_ip_adapter(pipe)
    with pr.apply(concept_only, [teddy]):
        concept_alone = generate(concept_only)
    with pr.apply(pipe, [teddy]):
        pipe.set_ip_adapter_scale(0.0)
        np.testing.assert_array_equal(
            generate(pipe, ip_adapter_image_embeds=IMAGE_EMBEDS), concept_alone
        )


@pytest.mark.parametrize("action", ["load_ip_adapter", "unload_ip_adapter"])
def test_ip_adapter_load_or_unload_while_applied_is_refused(teddy, action) -> None:
    pipe = build_pipeline("sd-1")
    if action == "unload_ip_adapter":
        load_ip_adapter(pipe)
    with pr.apply(pipe, [teddy]):
        before = processors(pipe)
        with pytest.raises(pr.PerfusionRuntimeError) as raised:
            load_ip_adapter(pipe) if action == "load_ip_adapter" else pipe.unload_ip_adapter()
        assert raised.value.code == "ALREADY_APPLIED"
        assert processors(pipe) == before


# ------------------------------------------------------------------------------------------------
# ControlNet, img2img and inpaint siblings
# ------------------------------------------------------------------------------------------------


def tiny_controlnet() -> Any:
    from diffusers import ControlNetModel

    torch.manual_seed(0)
    return ControlNetModel(
        in_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=2,
        norm_num_groups=8,
        cross_attention_dim=32,
        attention_head_dim=8,
        conditioning_embedding_out_channels=(16, 32),
    ).eval()


def test_controlnet_pipeline(teddy) -> None:
    from diffusers import StableDiffusionControlNetPipeline

    components = build_pipeline("sd-1").components
    controlnet = tiny_controlnet()
    pipe = StableDiffusionControlNetPipeline(**components, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    condition = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    without = generate(pipe, image=condition)
    controlnet_processors = dict(controlnet.attn_processors)
    originals = processors(pipe)
    with pr.apply(pipe, [teddy]):
        with_concept = against_reference(pipe, originals, [teddy], image=condition)
        # only the UNet's attn2 carries the edit; the ControlNet's copy reads the embedding only
        assert dict(controlnet.attn_processors) == controlnet_processors
    assert_differs(with_concept, without)
    np.testing.assert_array_equal(generate(pipe, image=condition), without)


START = np.random.default_rng(0).random((1, 32, 32, 3)).astype(np.float32)
MASK = np.zeros((1, 32, 32), dtype=np.float32)
MASK[:, 8:24, 8:24] = 1.0


def sibling_call(kind: str) -> dict[str, Any]:
    if kind == "img2img":
        return {"image": START, "strength": 0.9}
    return {"image": START, "mask_image": MASK, "strength": 0.9}


def sibling_class(kind: str) -> Any:
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline

    return {"img2img": StableDiffusionImg2ImgPipeline, "inpaint": StableDiffusionInpaintPipeline}[
        kind
    ]


@pytest.mark.parametrize("kind", ["img2img", "inpaint"])
def test_sibling_built_from_components_after_apply(teddy, kind) -> None:
    pipe = build_pipeline("sd-1")
    call = sibling_call(kind)
    plain_before = generate(sibling_class(kind)(**pipe.components), PLAIN_PROMPT, **call)
    originals = processors(pipe)
    handle = pr.apply(pipe, [teddy])
    sibling = sibling_class(kind)(**pipe.components)  # shares the UNet, encoder, tokenizer copy
    sibling.set_progress_bar_config(disable=True)
    against_reference(sibling, originals, [teddy], **call)
    handle.remove()
    # the UNet and the text encoder are shared, so the sibling is back to the base too …
    np.testing.assert_array_equal(generate(sibling, PLAIN_PROMPT, **call), plain_before)
    # … but it keeps the tokenizer it was built with, which still knows the trigger token,
    # whose id the restored embedding table no longer has (rebuild siblings after remove)
    assert "<teddy>" in sibling.tokenizer.get_vocab()
    assert "<teddy>" not in pipe.tokenizer.get_vocab()


def test_sibling_built_before_apply_shares_the_unet_but_not_the_tokenizer(teddy) -> None:
    pipe = build_pipeline("sd-1")
    sibling = sibling_class("img2img")(**pipe.components)
    sibling.set_progress_bar_config(disable=True)
    call = sibling_call("img2img")
    before = generate(sibling, PLAIN_PROMPT, **call)
    with pr.apply(pipe, [teddy]):
        # the edited attention and the wrapped embedding are shared objects …
        assert all(
            isinstance(sibling.unet.get_submodule(path).processor, pr.PerfusionAttnProcessor)
            for path in attn2_paths(pipe)
        )
        shared = sibling.text_encoder.get_input_embeddings()
        assert shared is pipe.text_encoder.get_input_embeddings()
        assert isinstance(shared, pr.tokens.ConceptEmbedding)
        # … the tokenizer is the sibling's own: "<teddy>" is not one token there
        assert "<teddy>" not in sibling.tokenizer.get_vocab()
        # and the edit (not an identity for other tokens: s(e) ≠ 0) reaches its images
        assert not np.array_equal(generate(sibling, PLAIN_PROMPT, **call), before)
    np.testing.assert_array_equal(generate(sibling, PLAIN_PROMPT, **call), before)


def test_apply_to_a_sibling_sharing_an_applied_unet_is_refused(teddy) -> None:
    pipe = build_pipeline("sd-1")
    sibling = sibling_class("img2img")(**pipe.components)
    with pr.apply(pipe, [teddy]):
        assert outcome(lambda: pr.apply(sibling, [teddy])) == "ALREADY_APPLIED"


# ------------------------------------------------------------------------------------------------
# SDXL with prompt_embeds, compel
# ------------------------------------------------------------------------------------------------


def sdxl_embeds(pipe: Any, prompt: str) -> dict[str, torch.Tensor]:
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
        prompt, device=pipe.device, num_images_per_prompt=1, do_classifier_free_guidance=True
    )
    return {
        "prompt_embeds": embeds,
        "negative_prompt_embeds": negative,
        "pooled_prompt_embeds": pooled,
        "negative_pooled_prompt_embeds": negative_pooled,
    }


def test_sdxl_prompt_embeds_passed_in(sdxl_teddy) -> None:
    pipe = build_pipeline("sdxl")
    originals = processors(pipe)
    with pr.apply(pipe, [sdxl_teddy]):
        images = []
        for prompt in (CONCEPT_PROMPT, "a <teddy> on a beach"):
            from_prompt = generate(pipe, prompt)
            from_embeds = against_reference(
                pipe, originals, [sdxl_teddy], prompt=None, **sdxl_embeds(pipe, prompt)
            )
            np.testing.assert_array_equal(from_embeds, from_prompt)
            images.append(from_embeds)
    assert_differs(*images)


def test_sdxl_prompt_embeds_with_global_locking_are_refused(sdxl_teddy) -> None:
    pipe = build_pipeline("sdxl")
    with pr.apply(pipe, [sdxl_teddy], global_locking=True):
        embeds = sdxl_embeds(pipe, CONCEPT_PROMPT)
        with pytest.raises(pr.PerfusionRuntimeError) as refused:
            generate(pipe, None, **embeds)
    assert refused.value.code == pr.RuntimeErrorCode.GLOBAL_LOCKING_NEEDS_PROMPT


def test_compel_weighting_and_long_prompts(teddy) -> None:
    from compel import Compel

    pipe = build_pipeline("sd-1")
    originals = processors(pipe)
    stale = Compel(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder)
    words = " ".join(["a red car in a garden"] * 14) + " and a {} on a table"
    long_prompt = words.format("(<teddy>)1.3")  # compel's weighting syntax
    with pr.apply(pipe, [teddy]):
        # compel made before apply holds the old tokenizer: the trigger token is split there
        assert not torch.equal(stale(CONCEPT_PROMPT), pr.encode_prompts(pipe, [CONCEPT_PROMPT])[0])
        compel = Compel(
            tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, truncate_long_prompts=False
        )
        torch.testing.assert_close(
            compel(CONCEPT_PROMPT), pr.encode_prompts(pipe, [CONCEPT_PROMPT])[0], rtol=0, atol=0
        )
        assert len(pipe.tokenizer(long_prompt).input_ids) > 77
        embeds, negative = compel.pad_conditioning_tensors_to_same_length(
            [compel(long_prompt), compel("")]
        )
        assert embeds.shape[1] == 154
        # the trigger token in the second 77-token chunk opens its gate
        token_id = pipe.tokenizer.convert_tokens_to_ids("<teddy>")
        ids = pipe.tokenizer(words.format("<teddy>"), truncation=False).input_ids
        e = embeds[0].double().numpy()
        u, target = teddy.gate_direction.astype(np.float64), teddy.target_input.astype(np.float64)
        scores = e @ u / (target @ u)
        # chunks are [start, 75 tokens, end]: past the first, a token moves on by two
        position = ids.index(token_id) + 2
        assert position > 77
        assert scores[position] > GATE[0] and scores.argmax() == position
        with_concept = against_reference(
            pipe, originals, [teddy], prompt=None, prompt_embeds=embeds,
            negative_prompt_embeds=negative,
        )  # fmt: skip
    without = generate(pipe, None, prompt_embeds=embeds, negative_prompt_embeds=negative)
    assert_differs(with_concept, without)


# ------------------------------------------------------------------------------------------------
# Schedulers, callbacks
# ------------------------------------------------------------------------------------------------


def _compatible_schedulers() -> list[str]:
    return sorted(cls.__name__ for cls in build_pipeline("sd-1").scheduler.compatibles)


#: Schedulers whose diffusers implementation imports an optional package (not the runtime's).
OPTIONAL_SCHEDULER_PACKAGES = {"DPMSolverSDEScheduler": "torchsde", "LMSDiscreteScheduler": "scipy"}


@pytest.mark.parametrize("name", _compatible_schedulers())
def test_every_compatible_scheduler(teddy, name) -> None:
    import diffusers

    if name in OPTIONAL_SCHEDULER_PACKAGES:
        package = OPTIONAL_SCHEDULER_PACKAGES[name]
        pytest.importorskip(package, reason=f"{name} needs {package}, not installed here")
    pipe = build_pipeline("sd-1")
    # SD's own PNDM config skips the Runge-Kutta warm-up (which needs 4 steps or more); the SDE
    # solver draws its Brownian tree's seed from the global RNG unless given one
    options = {
        "PNDMScheduler": {"skip_prk_steps": True},
        "DPMSolverSDEScheduler": {"noise_sampler_seed": 0},
    }.get(name, {})
    pipe.scheduler = getattr(diffusers, name).from_config(pipe.scheduler.config, **options)
    originals = processors(pipe)
    with pr.apply(pipe, [teddy]):
        image = against_reference(pipe, originals, [teddy])
    assert np.isfinite(image).all()


def test_callback_on_step_end_changes_gate_and_embeddings_mid_generation(teddy) -> None:
    pipe = build_pipeline("sd-1")
    originals = processors(pipe)
    with pr.apply(pipe, [teddy]) as handle:
        other = torch.cat(pipe.encode_prompt("a <teddy> on a beach", pipe.device, 1, True)[::-1])

        def run(set_beta: Callable[[float], None]) -> np.ndarray:
            steps_seen = []

            def callback(_pipe, step, _timestep, tensors):
                steps_seen.append(step)
                if step == 0:
                    set_beta(0.4)
                if step == 1:
                    return {"prompt_embeds": other.clone()}  # another prompt from here on
                return {}

            image = generate(
                pipe,
                steps=4,
                callback_on_step_end=callback,
                callback_on_step_end_tensor_inputs=["prompt_embeds"],
            )
            assert steps_seen == [0, 1, 2, 3]
            return image

        got = run(lambda beta: handle.set_gate("<teddy>", beta=beta))
        handle.set_gate("<teddy>", beta=GATE[0])
        plain = generate(pipe, steps=4)
        with reference(pipe, originals, [teddy]) as gates:
            want = run(lambda beta: gates.update({"<teddy>": (beta, GATE[1])}))
    assert_close(got, want)
    assert_differs(got, plain)


# ------------------------------------------------------------------------------------------------
# torch.compile
# ------------------------------------------------------------------------------------------------


def test_torch_compile_of_the_unet(teddy) -> None:
    """``backend="eager"``: dynamo's tracing, guards and recompilation are what a concept can
    break, and they are the same for every backend; inductor's code generation takes minutes on
    this 2-core machine (measured in runtime/README.md)."""
    from torch._dynamo.utils import counters

    pipe = build_pipeline("sd-1")
    base = generate(pipe)
    with pr.apply(pipe, [teddy]) as handle:
        eager = generate(pipe)
        handle.set_gate("<teddy>", beta=0.5)
        eager_gate = generate(pipe)
        handle.set_gate("<teddy>", beta=GATE[0])
    torch._dynamo.reset()
    try:
        handle = pr.apply(pipe, [teddy])
        unet = pipe.unet
        pipe.unet = torch.compile(unet, backend="eager")
        assert_close(generate(pipe), eager)
        # the first generations recompile: once per layer shape, and on guards over state the
        # runtime fills on first use (per-device copies, the last encodings' weak reference)
        generate(pipe, steps=1)
        generate(pipe, steps=1)
        graphs = counters["stats"]["unique_graphs"]
        assert_close(generate(pipe), eager)
        generate(pipe, steps=4)
        assert counters["stats"]["unique_graphs"] == graphs, "recompiled in a warm generation"
        handle.set_gate("<teddy>", beta=0.5)
        assert_close(generate(pipe), eager_gate)
        handle.remove()
        assert_close(generate(pipe), base)
    finally:
        torch._dynamo.reset()


def test_apply_after_torch_compile(teddy) -> None:
    pipe = build_pipeline("sd-1")
    pipe.unet = torch.compile(pipe.unet, backend="eager")
    assert outcome(lambda: pr.apply(pipe, [teddy])) == "ok"


# ------------------------------------------------------------------------------------------------
# accelerate CPU offload
# ------------------------------------------------------------------------------------------------


def hooks(pipe: Any) -> dict[str, str]:
    return {
        name: type(getattr(component, "_hf_hook", None)).__name__
        for name, component in pipe.components.items()
        if isinstance(component, torch.nn.Module)
    }


@pytest.mark.parametrize("order", ["offload-then-apply", "apply-then-offload"])
def test_model_cpu_offload_hooks_survive_apply_and_remove(teddy, order) -> None:
    """``enable_model_cpu_offload(device="cpu")``: accelerate's real CpuOffload hooks, with the
    CPU as the execution device (no weights move; on a GPU they move between CPU and GPU)."""
    reference_pipe, pipe = build_pipeline("sd-1"), build_pipeline("sd-1")
    base = generate(reference_pipe)
    with pr.apply(reference_pipe, [teddy]):
        want = generate(reference_pipe)
    if order == "offload-then-apply":
        pipe.enable_model_cpu_offload(device="cpu")
        handle = pr.apply(pipe, [teddy])
    else:
        handle = pr.apply(pipe, [teddy])
        pipe.enable_model_cpu_offload(device="cpu")
    expected_hooks = {"text_encoder": "CpuOffload", "unet": "CpuOffload", "vae": "CpuOffload"}
    assert hooks(pipe) == expected_hooks
    np.testing.assert_array_equal(generate(pipe), want)
    handle.remove()
    assert hooks(pipe) == expected_hooks
    np.testing.assert_array_equal(generate(pipe), base)


def test_apply_after_sequential_cpu_offload(teddy) -> None:
    pipe = build_pipeline("sd-1")
    pipe.enable_sequential_cpu_offload(device="cpu")
    assert outcome(lambda: pr.apply(pipe, [teddy])) in {"ok", "UNSUPPORTED_PIPELINE"}


@pytest.mark.parametrize("mode", ["enable_model_cpu_offload", "enable_sequential_cpu_offload"])
def test_cpu_offload_on_a_gpu(teddy, mode) -> None:
    """Offload to a GPU execution device: concepts applied before offloading give the images of
    an unoffloaded pipeline, and remove() leaves the hooks in place."""
    if not torch.cuda.is_available():
        pytest.skip(
            "needs a GPU: offloading moves weights between the CPU and an accelerator; on the "
            "CPU alone model offload is tested above, and sequential offload fails in accelerate "
            "1.16 itself (TypeError in set_module_tensor_to_device, without any concept)"
        )
    reference_pipe, pipe = build_pipeline("sd-1").to("cuda"), build_pipeline("sd-1")
    with pr.apply(reference_pipe, [teddy]):
        want = generate(reference_pipe)
    handle = pr.apply(pipe, [teddy])
    getattr(pipe, mode)()
    before = hooks(pipe)
    np.testing.assert_allclose(generate(pipe), want, rtol=0, atol=1e-3)
    handle.remove()
    assert hooks(pipe) == before


# ------------------------------------------------------------------------------------------------
# perfusion_runtime.compat: the checks behind the rows above, each also checked on its own
# ------------------------------------------------------------------------------------------------


def test_compat_check_components_free_sees_a_sibling_sharing_applied_components(teddy) -> None:
    from perfusion_runtime import compat

    pipe = build_pipeline("sd-1")
    sibling = sibling_class("img2img")(**pipe.components)
    compat.check_components_free(sibling)
    with pr.apply(pipe, [teddy]):
        with pytest.raises(pr.PerfusionRuntimeError) as raised:
            compat.check_components_free(sibling)
        assert raised.value.code == "ALREADY_APPLIED"
    compat.check_components_free(sibling)


def test_compat_guard_refuses_loaders_and_routes_the_ip_adapter_scale(teddy) -> None:
    from perfusion_runtime import compat

    pipe, concept_only = build_pipeline("sd-1"), build_pipeline("sd-1")
    load_ip_adapter(pipe)
    with pr.apply(concept_only, [teddy]):
        concept_alone = generate(concept_only)
    with pr.apply(pipe, [teddy]):
        compat.guard(pipe)
        before = (processors(pipe), len(pipe.tokenizer), pipe.unet.encoder_hid_proj)
        for call in (lambda: load_inversion(pipe), lambda: load_ip_adapter(pipe)):
            with pytest.raises(pr.PerfusionRuntimeError) as raised:
                call()
            assert raised.value.code == "ALREADY_APPLIED"
        with pytest.raises(pr.PerfusionRuntimeError):
            pipe.unload_ip_adapter()
        assert (processors(pipe), len(pipe.tokenizer), pipe.unet.encoder_hid_proj) == before
        pipe.set_ip_adapter_scale(0.0)
        assert processors(pipe) == before[0]
        np.testing.assert_array_equal(
            generate(pipe, ip_adapter_image_embeds=IMAGE_EMBEDS), concept_alone
        )
        pipe.set_ip_adapter_scale(1.0)
        compat.unguard(pipe)
    assert not set(compat.GUARDED_LOADERS) & set(pipe.__dict__)


def test_compat_unwrap_compiled_gives_the_family_layout() -> None:
    from types import SimpleNamespace

    from perfusion_runtime import compat

    pipe = build_pipeline("sd-1")
    compiled = torch.compile(pipe.unet, backend="eager")
    view = SimpleNamespace(unet=compat.unwrap_compiled(compiled), text_encoder=pipe.text_encoder)
    assert pr.pipeline_layout(view) == pr.pipeline_layout(pipe)
    assert compat.unwrap_compiled(pipe.unet) is pipe.unet


def test_compat_materialized_weight_fingerprints_an_offloaded_unet(teddy) -> None:
    from perfusion_runtime import compat

    pipe = build_pipeline("sd-1")
    pipe.enable_sequential_cpu_offload(device="cpu")
    names = pf.fingerprint_names(teddy.layers)
    modules = [pipe.unet.get_submodule(name.removesuffix(".weight")) for name in names]
    assert all(module.weight.device.type == "meta" for module in modules)
    signs = [
        (name, torch.signbit(compat.materialized_weight(module)).numpy())
        for name, module in zip(names, modules, strict=True)
    ]
    assert pf.base_fingerprint(signs) == teddy.base_fingerprint
