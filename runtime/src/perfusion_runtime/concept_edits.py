"""A set of concepts turned into what a model needs to carry them: one edit per cross-attention
layer, named as the model names its layers, and the trigger tokens' embedding rows.

This is the entry point for tools with their own model code (ComfyUI, A1111, a research UNet)::

    edits = pr.build_edits(["teddy.perfusion.safetensors"], layer_names="ldm")
    patch = pr.patch_cross_attention(model.diffusion_model, edits.layers)
    # give the text encoder edits.embeddings["text_encoder"][n] for the token edits.tokens[n]
    ...
    edits.concepts.set_gate("<teddy>", beta=0.6)   # the next forward pass uses the new gate
    patch.remove()

:func:`~perfusion_runtime.apply` builds the same edits for a diffusers pipeline.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

import perfusion_format as pf

from .edit import ConceptSet, ConceptVectors, LayerEdit, check_gate
from .errors import PerfusionRuntimeError, RuntimeErrorCode
from .layer_names import diffusers_to_ldm

__all__ = ["ConceptEdits", "ConceptSource", "LayerNaming", "build_edits", "load_concept"]

ConceptSource = str | os.PathLike[str] | bytes | pf.Concept
LayerNaming = Literal["diffusers", "ldm"]


def load_concept(source: ConceptSource) -> pf.Concept:
    """A validated concept from a path, the file's bytes, or a concept (returned as is)."""
    if isinstance(source, pf.Concept):
        return source
    if isinstance(source, bytes | bytearray):
        return pf.loads(bytes(source))
    return pf.load(source)


def load_concepts(concepts: Sequence[ConceptSource] | ConceptSource) -> list[pf.Concept]:
    """One source or a sequence of them, loaded and validated; ValueError when there is none."""
    single = isinstance(concepts, str | bytes | bytearray | os.PathLike | pf.Concept)
    loaded = [load_concept(source) for source in ([concepts] if single else concepts)]
    if not loaded:
        raise ValueError("at least one concept is needed")
    return loaded


@dataclass(frozen=True)
class ConceptEdits:
    """The edits of N concepts, ready for a model.

    ``concepts`` is the :class:`ConceptSet` every layer shares (its tokens name the concepts:
    ``concepts.set_gate(token, beta=…)``); ``layers`` maps each cross-attention layer's name to
    its :class:`LayerEdit`; ``embeddings`` maps each text encoder (``text_encoder``,
    ``text_encoder_2``) to the trigger tokens' input embedding rows [N, d_enc], row n for
    ``tokens[n]``; ``superclasses`` maps each token to its superclass word (global locking needs
    it to write the superclass prompt).
    """

    concepts: ConceptSet
    layers: dict[str, LayerEdit]
    embeddings: dict[str, Tensor]
    superclasses: dict[str, str]

    @property
    def tokens(self) -> tuple[str, ...]:
        """The trigger tokens, in the order the concepts were given."""
        return self.concepts.tokens

    @property
    def nbytes(self) -> int:
        """Bytes held: stacked vectors, gates, layer targets and embedding rows."""
        rows = sum(t.numel() * t.element_size() for t in self.embeddings.values())
        return self.concepts.nbytes + sum(e.nbytes for e in self.layers.values()) + rows


def _check_compatible(concepts: Sequence[pf.Concept]) -> None:
    """Refuse concepts that cannot share one model: another family (FAMILY_MISMATCH), other
    layers or text widths (LAYER_MISMATCH), or a token used twice (DUPLICATE_TOKEN)."""
    first = concepts[0]
    widths = {name: array.shape[1] for name, array in first.embeddings.items()}
    seen: set[str] = set()
    for concept in concepts:
        if concept.family.name != first.family.name:
            raise PerfusionRuntimeError(
                RuntimeErrorCode.FAMILY_MISMATCH,
                f"{concept.token} is a {concept.family.name} concept and {first.token} a "
                f"{first.family.name} one: concepts applied together need one family",
            )
        mine = {name: array.shape[1] for name, array in concept.embeddings.items()}
        if mine != widths or sorted(concept.layers) != sorted(first.layers):
            raise PerfusionRuntimeError(
                RuntimeErrorCode.LAYER_MISMATCH,
                f"{concept.token}'s layers or text widths differ from {first.token}'s",
            )
        if concept.token in seen:
            raise PerfusionRuntimeError(
                RuntimeErrorCode.DUPLICATE_TOKEN, f"two concepts use the token {concept.token}"
            )
        seen.add(concept.token)


def _layer_name(path: str, naming: LayerNaming, layers_per_block: int) -> str:
    if naming == "diffusers":
        return path
    name = diffusers_to_ldm(path, layers_per_block)
    if name is None:
        raise PerfusionRuntimeError(
            RuntimeErrorCode.LAYER_MISMATCH,
            f"the layer {path} has no LDM name (with {layers_per_block} res blocks per level)",
        )
    return name


def build_edits(
    concepts: Sequence[ConceptSource] | ConceptSource,
    *,
    beta: float | None = None,
    tau: float | None = None,
    layer_names: LayerNaming = "diffusers",
    layers_per_block: int = 2,
) -> ConceptEdits:
    """The :class:`ConceptEdits` of one or more concepts (paths, file bytes or
    :class:`perfusion_format.Concept` objects).

    ``beta``/``tau`` override every concept's inference gate (each file carries its own).
    ``layer_names="ldm"`` names the layers as the LDM/SGM UNet does (``input_blocks.1.1.
    transformer_blocks.0.attn2`` …, :mod:`perfusion_runtime.layer_names`; ``layers_per_block``
    res blocks per level), for model code written after the original repositories; the default
    names them by their diffusers module paths, as the file does. Several concepts combine as
    in the paper's appendix B; they must share a family and layers.

    Nothing about a model is checked here — the base fingerprint (``pr.pipeline_fingerprint``
    for a diffusers UNet, or ``perfusion_format.base_fingerprint`` over the model's own weights)
    is the caller's to compare with ``concept.base_fingerprint``. Raises
    :class:`~perfusion_format.FormatError` for a bad file and
    :class:`~perfusion_runtime.PerfusionRuntimeError` with FAMILY_MISMATCH, LAYER_MISMATCH,
    DUPLICATE_TOKEN or INVALID_GATE.
    """
    loaded = load_concepts(concepts)
    _check_compatible(loaded)
    if beta is not None or tau is not None:
        check_gate(0.0 if beta is None else beta, 1.0 if tau is None else tau)
    vectors = [ConceptVectors.from_concept(concept, beta, tau) for concept in loaded]
    concept_set = ConceptSet(vectors)
    explicit = any(v.key_targets is not None for v in vectors)
    layers = {}
    for path, width in loaded[0].layers:
        values = torch.stack([v.value_targets[path] for v in vectors])
        keys = None
        if explicit:
            zeros = torch.zeros(width)
            keys = torch.stack(
                [zeros if v.key_targets is None else v.key_targets[path] for v in vectors]
            )
        layers[_layer_name(path, layer_names, layers_per_block)] = LayerEdit(
            concept_set, values, keys
        )
    embeddings = {
        encoder: torch.cat([torch.tensor(c.embeddings[encoder]) for c in loaded])
        for encoder in loaded[0].embeddings
    }
    superclasses = {concept.token: concept.superclass for concept in loaded}
    return ConceptEdits(concept_set, layers, embeddings, superclasses)
