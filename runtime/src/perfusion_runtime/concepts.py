"""Making concepts from a pipeline: the input covariance, and a concept initialised as the paper
does (the starting point of training, and a convenient valid concept for tests)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch
from torch import Tensor

import perfusion_format as pf

from .errors import PerfusionRuntimeError, RuntimeErrorCode
from .pipeline import pipeline_fingerprint, pipeline_layout

__all__ = [
    "DEFAULT_TEMPLATE",
    "Covariance",
    "build_covariance",
    "covariance_factor",
    "default_captions",
    "encode_prompts",
    "estimate_covariance",
    "gate_direction",
    "new_concept",
    "parse_captions",
    "solve_gate",
    "superclass_token_ids",
    "unet_conditioning",
]

DEFAULT_TEMPLATE = "a photo of a {}"
#: Ridge added to C before solving C u = i*, relative to C's mean diagonal (C from a few hundred
#: captions has a tail of tiny eigenvalues).
RIDGE = 1e-4


def parse_captions(text: str) -> list[str]:
    """The captions of a caption file: one a line; blank lines and ``#`` comments are skipped."""
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def default_captions() -> list[str]:
    """The caption list bundled with the runtime (320 varied captions)."""
    text = resources.files("perfusion_runtime").joinpath("data/captions.txt").read_text()
    return parse_captions(text)


def unet_conditioning(pipe: Any, prompts: Sequence[str]) -> tuple[Tensor, Tensor | None]:
    """The pipeline's own ``encode_prompt`` without guidance, differentiable: the encodings
    [B, T, d] its UNet's cross-attention reads (on the execution device, in the text encoder's
    dtype) and, for SDXL, the pooled text embeddings [B, d₂] (else None)."""
    outputs = pipe.encode_prompt(
        prompt=list(prompts),
        device=pipe._execution_device,
        num_images_per_prompt=1,
        do_classifier_free_guidance=False,
    )
    return outputs[0], outputs[2] if len(outputs) > 2 else None


@torch.no_grad()
def encode_prompts(pipe: Any, prompts: Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
    """Encode prompts exactly as the pipeline does for its UNet.

    Returns the encodings [B, T, d] (float32, CPU), the first tokenizer's ids [B, T] and its
    attention mask [B, T] (1 for real tokens — start, words, end — and 0 for padding).
    """
    tokenizer = pipe.tokenizer
    tokens = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    embeds = unet_conditioning(pipe, prompts)[0]
    return embeds.float().cpu(), tokens.input_ids, tokens.attention_mask


#: Called after each batch of captions with (captions encoded so far, all captions).
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Covariance:
    """An input covariance C and what it was estimated from.

    ``matrix`` is float64 [d, d] on the CPU; ``captions`` and ``tokens`` count the captions and
    the non-padding tokens averaged over. ``text_encoder`` is the fingerprint of the text
    encoders that made it (:func:`~perfusion_runtime.text_encoder_fingerprint`), known once the
    covariance has been saved or loaded (:mod:`perfusion_runtime.covariance`).
    """

    matrix: Tensor
    captions: int
    tokens: int
    text_encoder: str | None = None


@torch.no_grad()
def estimate_covariance(
    pipe: Any,
    captions: Sequence[str] | None = None,
    *,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> Covariance:
    """C = (1/N) Σ e eᵀ, uncentered, over the encodings of every non-padding token (start and
    end tokens included) of ``captions`` (default: :func:`default_captions`), encoded
    ``batch_size`` captions at a time exactly as the pipeline encodes prompts."""
    captions = list(default_captions() if captions is None else captions)
    if not captions or batch_size < 1:
        raise ValueError("estimating a covariance needs at least one caption and batch_size ≥ 1")
    total: Tensor | None = None
    count = 0
    for start in range(0, len(captions), batch_size):
        embeds, _, mask = encode_prompts(pipe, captions[start : start + batch_size])
        rows = embeds[mask.bool()].double()
        total = rows.T @ rows if total is None else total + rows.T @ rows
        count += rows.shape[0]
        if progress is not None:
            progress(min(start + batch_size, len(captions)), len(captions))
    assert total is not None
    return Covariance(total / count, len(captions), count)


def build_covariance(
    pipe: Any, captions: Sequence[str] | None = None, batch_size: int = 32
) -> Tensor:
    """C, float64 [d, d] on the CPU: :func:`estimate_covariance`'s matrix."""
    return estimate_covariance(pipe, captions, batch_size=batch_size).matrix


def covariance_factor(covariance: Tensor) -> Tensor:
    """The Cholesky factor L (float64, CPU) of C plus a small ridge (``RIDGE`` × mean diagonal),
    so that each u = C⁻¹ i* costs O(d²) (:func:`solve_gate`); INVALID_COVARIANCE unless C is
    positive semi-definite."""
    c = covariance.double().cpu()
    ridge = RIDGE * torch.diagonal(c).mean()
    factor, info = torch.linalg.cholesky_ex(c + ridge * torch.eye(c.shape[0], dtype=torch.float64))
    if info != 0 or not ridge > 0:
        raise PerfusionRuntimeError(
            RuntimeErrorCode.INVALID_COVARIANCE, "C is not positive semi-definite"
        )
    return factor


def solve_gate(factor: Tensor, target_input: Tensor) -> Tensor:
    """u = C⁻¹ i* (float32) from :func:`covariance_factor`'s L."""
    return torch.cholesky_solve(target_input.double().cpu()[:, None], factor)[:, 0].float()


def gate_direction(covariance: Tensor, target_input: Tensor) -> Tensor:
    """u = C⁻¹ i*, solved in float64 with a small ridge (``RIDGE`` × mean diagonal)."""
    return solve_gate(covariance_factor(covariance), target_input)


def superclass_token_ids(pipe: Any, superclass: str) -> dict[str, int]:
    """The superclass word's single token id in each tokenizer (SUPERCLASS_NOT_ONE_TOKEN if it
    splits, with the pieces it splits into)."""
    ids = {}
    for name in ("tokenizer", "tokenizer_2"):
        tokenizer = getattr(pipe, name, None)
        if tokenizer is None:
            continue
        pieces = tokenizer(superclass, add_special_tokens=False).input_ids
        if len(pieces) != 1:
            words = ", ".join(repr(p) for p in tokenizer.convert_ids_to_tokens(pieces))
            raise PerfusionRuntimeError(
                RuntimeErrorCode.SUPERCLASS_NOT_ONE_TOKEN,
                f"{superclass!r} is {len(pieces)} tokens ({words}) for the {name}; "
                "use a one-token word for the superclass, e.g. the noun alone",
            )
        ids[name] = pieces[0]
    return ids


def _check_covariance(covariance: Tensor, text_dim: int) -> Tensor:
    c = torch.as_tensor(covariance).double().cpu()
    if c.shape != (text_dim, text_dim) or not torch.isfinite(c).all():
        raise PerfusionRuntimeError(
            RuntimeErrorCode.INVALID_COVARIANCE,
            f"expected a finite [{text_dim}, {text_dim}] matrix, got {list(c.shape)}",
        )
    if not torch.allclose(c, c.T, rtol=1e-5, atol=1e-8 * float(c.abs().max())):
        raise PerfusionRuntimeError(RuntimeErrorCode.INVALID_COVARIANCE, "C is not symmetric")
    return c


@torch.no_grad()
def new_concept(
    pipe: Any,
    *,
    token: str,
    superclass: str,
    covariance: Tensor | None = None,
    name: str | None = None,
    template: str = DEFAULT_TEMPLATE,
    dtype: pf.DType = "F32",
    **metadata: Any,
) -> pf.Concept:
    """A concept initialised as the paper does, for ``pipe``'s base weights.

    Embedding = the superclass word's embedding; i* = i_s = the superclass word's encoding in
    ``template``; u = C⁻¹ i*; value targets o_v = W_v i_s, keys locked (o_k = W_k i_s). Applied
    to the pipeline, "<token>" then behaves like the superclass word. ``covariance`` defaults to
    :func:`build_covariance` over the bundled captions. Extra keyword arguments go to
    :func:`perfusion_format.create_concept` (author, license, description, training, …).
    """
    layout = pipeline_layout(pipe)
    ids = superclass_token_ids(pipe, superclass)
    embeddings = {
        encoder: getattr(pipe, encoder)
        .get_input_embeddings()
        .weight[ids[tokenizer]]
        .float()
        .cpu()
        .numpy()[None]
        for encoder, tokenizer in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"))
        if getattr(pipe, encoder, None) is not None
    }
    embeds, input_ids, _ = encode_prompts(pipe, [template.format(superclass)])
    position = int((input_ids[0] == ids["tokenizer"]).nonzero()[0])
    superclass_input = embeds[0, position]
    c = _check_covariance(
        build_covariance(pipe) if covariance is None else covariance, layout.text_dim
    )
    layers = layout.layers
    if layout.family != "custom":
        layers = pf.get_family(layout.family).layers or layers
    value_targets = {
        path: (pipe.unet.get_submodule(path).to_v.weight.float().cpu() @ superclass_input).numpy()
        for path, _ in layers
    }
    return pf.create_concept(
        name=name or superclass,
        token=token,
        superclass=superclass,
        family=layout.family,
        base_fingerprint=pipeline_fingerprint(pipe, layers),
        embeddings=embeddings,
        target_input=superclass_input.numpy(),
        gate_direction=gate_direction(c, superclass_input).numpy(),
        superclass_input=superclass_input.numpy(),
        value_targets=value_targets,
        dtype=dtype,
        **metadata,
    )
