"""A new concept for a pipeline, initialised as the paper does: the starting point of training,
and a convenient valid concept for tests."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

import perfusion_format as pf

from .covariance import build_covariance, check_covariance, gate_direction
from .pipeline import pipeline_fingerprint, pipeline_layout
from .prompts import encode_prompts, superclass_token_ids

__all__ = ["DEFAULT_TEMPLATE", "new_concept"]

#: The prompt whose superclass encoding initialises i* and i_s.
DEFAULT_TEMPLATE = "a photo of a {}"


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
    c = check_covariance(
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
