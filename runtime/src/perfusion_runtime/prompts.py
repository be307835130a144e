"""Prompts as the pipeline encodes them: the encodings its UNet reads, the tokenizer's ids and
mask, and the superclass word's token ids — what the covariance, a new concept and training
read from a pipeline's text side."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .errors import PerfusionRuntimeError, RuntimeErrorCode

__all__ = ["encode_prompts", "superclass_token_ids", "unet_conditioning"]


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
