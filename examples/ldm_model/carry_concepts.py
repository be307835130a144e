"""Perfusion concepts in a model that is not diffusers (``ldm_blocks.py``), through
perfusion_runtime's embedding API — the steps a ComfyUI or A1111 extension takes:

1. check each concept was made for these weights (:func:`base_fingerprint`);
2. build the per-layer edits, named the LDM way (``pr.build_edits(..., layer_names="ldm")``);
3. patch the cross-attention modules (``pr.patch_cross_attention``: it replaces each ``to_k`` /
   ``to_v`` Linear with an edited projection around it);
4. give the text encoder the trigger tokens: new rows in its token embedding table
   (``edits.embeddings``), new ids in its tokenizer.

``carried.edits.concepts.set_gate(token, beta=…)`` changes a gate from the next forward pass;
``carried.remove()`` puts every original Linear back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from ldm_blocks import LDMTransformers, expanded_embedding
from torch import nn

import perfusion_format as pf
import perfusion_runtime as pr

__all__ = ["CarriedConcepts", "base_fingerprint", "carry_concepts"]


def base_fingerprint(model: nn.Module, concept: pf.Concept, layers_per_block: int = 2) -> str:
    """The base fingerprint (spec §4.3) of ``model``'s weights over ``concept``'s layers.

    The spec names weights the diffusers way (``….attn2.to_k.weight``); each is read from the
    module with the LDM name of the same layer."""
    signs: list[tuple[str, np.ndarray]] = []
    for name in pf.fingerprint_names(concept.layers):
        layer, projection, _ = name.rsplit(".", 2)
        ldm = pr.diffusers_to_ldm(layer, layers_per_block)
        if ldm is None:
            raise pr.PerfusionRuntimeError(
                pr.RuntimeErrorCode.LAYER_MISMATCH, f"the layer {layer} has no LDM name"
            )
        module = model.get_submodule(ldm)
        weight = getattr(module, projection).weight.detach()
        signs.append((name, weight.signbit().cpu().numpy()))
    return pf.base_fingerprint(signs)


@dataclass
class CarriedConcepts:
    """Concepts patched into a model: their edits, the patch, and each trigger token's id in the
    expanded token embedding table."""

    edits: pr.ConceptEdits
    patch: pr.CrossAttentionPatch
    token_ids: dict[str, int]

    def remove(self) -> None:
        """Put the model's original ``to_k``/``to_v`` Linears back."""
        self.patch.remove()


def carry_concepts(
    model: LDMTransformers,
    token_embedding: nn.Embedding,
    concepts: Sequence[pr.ConceptSource],
    *,
    beta: float | None = None,
    layers_per_block: int = 2,
) -> tuple[CarriedConcepts, nn.Embedding]:
    """Patch ``concepts`` into ``model``; return them and ``token_embedding`` with a row per
    trigger token appended (the text encoder's new input embedding table).

    Refuses (BASE_MISMATCH) a concept made for other weights, before changing anything."""
    loaded = [pr.load_concept(source) for source in concepts]
    for concept in loaded:
        if base_fingerprint(model, concept, layers_per_block) != concept.base_fingerprint:
            raise pr.PerfusionRuntimeError(
                pr.RuntimeErrorCode.BASE_MISMATCH,
                f"{concept.token} was made for other base weights than this model's",
            )
    edits = pr.build_edits(loaded, beta=beta, layer_names="ldm", layers_per_block=layers_per_block)
    patch = pr.patch_cross_attention(model, edits.layers)
    table = expanded_embedding(token_embedding, edits.embeddings["text_encoder"])
    first = token_embedding.num_embeddings
    token_ids = {token: first + n for n, token in enumerate(edits.tokens)}
    return CarriedConcepts(edits, patch, token_ids), table
