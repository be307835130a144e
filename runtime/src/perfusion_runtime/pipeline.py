"""Applying concepts to a diffusers Stable Diffusion pipeline (SD 1.x, 2.x, XL and their
img2img / inpaint siblings, which share the components).

``apply`` validates everything first — files, family, layers, base fingerprint, tokens, gates —
and only then changes the pipeline: it swaps in tokenizers that know the trigger tokens, wraps the
text encoders' input embeddings, installs a :class:`~perfusion_runtime.processor.
PerfusionAttnProcessor` on every ``attn2`` layer, and (global locking) wraps ``encode_prompt``.
The returned :class:`PerfusionHandle` changes gates and puts every original object back.
"""

from __future__ import annotations

import inspect
import warnings
import weakref
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import wraps
from typing import Any

import torch
from torch import nn

import perfusion_format as pf

from . import compat
from .concept_edits import ConceptSource, build_edits, load_concepts
from .edit import ConceptSet, LayerEdit
from .errors import PerfusionRuntimeError, RuntimeErrorCode
from .processor import CrossAttentionPatch, KVTrace, patch_cross_attention
from .tokens import ConceptEmbedding, extended_tokenizer, in_vocabulary

__all__ = [
    "PerfusionHandle",
    "PipelineLayout",
    "applied",
    "apply",
    "check_not_applied",
    "check_token_free",
    "install",
    "pipeline_fingerprint",
    "pipeline_layout",
    "text_encoder_fingerprint",
    "unload",
]

#: (text encoder, tokenizer) component names, in the order a family lists its encoders.
_TEXT_COMPONENTS = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"))
_HANDLE_ATTRIBUTE = "_perfusion_handle"
#: The handle of the concepts each UNet carries (siblings built from ``pipe.components`` share it).
_APPLIED: weakref.WeakKeyDictionary[nn.Module, PerfusionHandle] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class PipelineLayout:
    """What a pipeline offers the edit: its family (a known one, or ``custom``), text encoders
    (component, width) in family order, and attn2 layers (UNet path, m_ℓ)."""

    family: str
    text_encoders: tuple[tuple[str, int], ...]
    layers: tuple[tuple[str, int], ...]

    @property
    def text_dim(self) -> int:
        """d: the width of the encodings the UNet's cross-attention sees."""
        return sum(width for _, width in self.text_encoders)


def _cross_attention_modules(unet: nn.Module) -> dict[str, nn.Module]:
    return {
        name: module
        for name, module in unet.named_modules()
        if name.endswith("attn2") and hasattr(module, "set_processor")
    }


def pipeline_layout(pipe: Any) -> PipelineLayout:
    """Read ``pipe``'s text encoders and attn2 table, and name its family."""
    unet = getattr(pipe, "unet", None)
    unet = None if unet is None else compat.unwrap_compiled(unet)
    encoders = tuple(
        (name, int(getattr(pipe, name).config.hidden_size))
        for name, _ in _TEXT_COMPONENTS
        if getattr(pipe, name, None) is not None
    )
    if unet is None or not encoders:
        raise PerfusionRuntimeError(
            RuntimeErrorCode.UNSUPPORTED_PIPELINE, "the pipeline has no UNet or no text encoder"
        )
    modules = _cross_attention_modules(unet)
    layers = tuple(sorted((path, int(m.to_k.weight.shape[0])) for path, m in modules.items()))
    text_dim = sum(width for _, width in encoders)
    if not layers or any(m.to_k.weight.shape[1] != text_dim for m in modules.values()):
        raise PerfusionRuntimeError(
            RuntimeErrorCode.UNSUPPORTED_PIPELINE,
            f"the UNet's cross-attention does not read the text encoders' {text_dim} features",
        )
    family = next(
        (
            name
            for name, spec in pf.FAMILIES.items()
            if spec.layers is not None
            and spec.text_encoders == encoders
            and sorted(spec.layers) == list(layers)
        ),
        "custom",
    )
    return PipelineLayout(family, encoders, layers)


_FINGERPRINTS: weakref.WeakKeyDictionary[nn.Module, dict[Any, tuple[Any, str]]] = (
    weakref.WeakKeyDictionary()
)


def pipeline_fingerprint(pipe: Any, layers: Sequence[tuple[str, int]]) -> str:
    """The base fingerprint (spec §4.3) of ``pipe``'s UNet over ``layers``, in that order.

    Cached per UNet; the cache is invalidated when any covered weight is replaced or changed in
    place (its storage or version counter moves), or when the adapters merged into a projection
    change (PEFT's ``fuse_lora``/``unfuse_lora`` write ``weight.data``, which moves neither).
    """
    names = pf.fingerprint_names(layers)
    unet = compat.unwrap_compiled(pipe.unet)
    modules = [unet.get_submodule(name.rsplit(".", 1)[0]) for name in names]
    weights = [compat.materialized_weight(module) for module in modules]
    version = tuple(
        (id(m), tuple(getattr(m, "merged_adapters", ())), w.data_ptr(), w._version, w.dtype)
        for m, w in zip(modules, weights, strict=True)
    )
    cache = _FINGERPRINTS.setdefault(unet, {})
    cached = cache.get(tuple(layers))
    if cached is None or cached[0] != version:
        signs = [
            (n, torch.signbit(w.detach()).cpu().numpy())
            for n, w in zip(names, weights, strict=True)
        ]
        cached = (version, pf.base_fingerprint(signs))
        cache[tuple(layers)] = cached
    return cached[1]


def text_encoder_fingerprint(pipe: Any) -> str:
    """The fingerprint of ``pipe``'s text encoders: what an input covariance was estimated with.

    The construction of the base fingerprint (spec §4.3: name, rank, dimensions and the packed
    sign bits of each tensor, SHA-256) applied to every parameter of every text encoder, named
    ``<component>.<parameter>`` (e.g. ``text_encoder.text_model.final_layer_norm.weight``),
    encoders in family order (``text_encoder``, then ``text_encoder_2``), parameters sorted by
    name. Only sign bits enter it, so it is the same in float32, float16 and bfloat16; the
    component prefix keeps it apart from any base fingerprint, which covers UNet weights.
    """
    return pf.base_fingerprint(
        (f"{name}.{key}", torch.signbit(parameter.detach()).cpu().numpy())
        for name, _ in pipeline_layout(pipe).text_encoders
        for key, parameter in sorted(getattr(pipe, name).named_parameters())
    )


def _check_fits(concept: pf.Concept, layout: PipelineLayout) -> None:
    """Refuse a concept whose family, layers or text widths differ from the pipeline's."""
    if concept.family.name != layout.family:
        raise PerfusionRuntimeError(
            RuntimeErrorCode.FAMILY_MISMATCH,
            f"{concept.token} is a {concept.family.name} concept; this pipeline is {layout.family}",
        )
    widths = {name: array.shape[1] for name, array in concept.embeddings.items()}
    if widths != dict(layout.text_encoders) or sorted(concept.layers) != list(layout.layers):
        raise PerfusionRuntimeError(
            RuntimeErrorCode.LAYER_MISMATCH,
            f"{concept.token}'s layers or text widths differ from this custom pipeline's",
        )


def _check_base(concept: pf.Concept, pipe: Any, allow_mismatch: bool) -> None:
    fingerprint = pipeline_fingerprint(pipe, concept.layers)
    if fingerprint == concept.base_fingerprint:
        return
    message = (
        f"{concept.token} was made for base {concept.base_fingerprint[:19]}…, "
        f"this pipeline's weights are {fingerprint[:19]}…"
    )
    if not allow_mismatch:
        raise PerfusionRuntimeError(
            RuntimeErrorCode.BASE_MISMATCH,
            message + " (allow_base_mismatch=True applies it anyway)",
        )
    warnings.warn(message, stacklevel=3)


def check_token_free(pipe: Any, token: str) -> None:
    """Refuse (DUPLICATE_TOKEN) a trigger token that one of ``pipe``'s tokenizers already knows."""
    for _, tokenizer_name in _TEXT_COMPONENTS:
        tokenizer = getattr(pipe, tokenizer_name, None)
        if tokenizer is not None and in_vocabulary(tokenizer, token):
            raise PerfusionRuntimeError(
                RuntimeErrorCode.DUPLICATE_TOKEN,
                f"{token} is already a token of the pipeline's {tokenizer_name}; "
                "pick a trigger token that is not a word, like <my-teddy>",
            )


def check_not_applied(pipe: Any) -> None:
    """Refuse (ALREADY_APPLIED) a pipeline that has concepts applied."""
    if pipe.__dict__.get(_HANDLE_ATTRIBUTE) is not None:
        raise PerfusionRuntimeError(
            RuntimeErrorCode.ALREADY_APPLIED,
            "this pipeline already has concepts applied: remove them first, or apply all at once",
        )
    compat.check_components_free(pipe)


def _wrap_encode_prompt(pipe: Any, superclasses: dict[str, str]) -> None:
    """Global locking: make ``pipe.encode_prompt`` return [concept ‖ superclass] encodings along
    the sequence axis, the second half encoding the prompt with each trigger token replaced by
    its superclass word (the processors read keys from it)."""
    original = pipe.encode_prompt
    signature = inspect.signature(original)

    def substitute(prompt: Any) -> Any:
        if isinstance(prompt, str):
            for token, word in superclasses.items():
                prompt = prompt.replace(token, word)
            return prompt
        if isinstance(prompt, list):
            return [substitute(item) for item in prompt]
        return prompt

    @wraps(original)
    def encode_prompt(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        if bound.arguments.get("prompt_embeds") is not None:
            # the superclass prompt is the prompt's text with each trigger replaced: encodings
            # passed in have no text, and keys taken from them would silently be the concept's
            raise PerfusionRuntimeError(
                RuntimeErrorCode.GLOBAL_LOCKING_NEEDS_PROMPT,
                "global locking needs the prompt's text, not prompt_embeds: pass prompt=…, or "
                "apply without global_locking",
            )
        concept_output = original(*bound.args, **bound.kwargs)
        for name in ("prompt", "prompt_2"):
            if name in bound.arguments:
                bound.arguments[name] = substitute(bound.arguments[name])
        superclass_output = original(*bound.args, **bound.kwargs)
        doubled = [
            None if mine is None else torch.cat([mine, theirs], dim=1)
            for mine, theirs in zip(concept_output[:2], superclass_output[:2], strict=True)
        ]
        return (*doubled, *concept_output[2:])

    pipe.__dict__["encode_prompt"] = encode_prompt


class PerfusionHandle:
    """Concepts applied to one pipeline: change their gates, or remove them.

    Also a context manager: ``with pr.apply(pipe, files): ...`` removes on exit.
    """

    def __init__(
        self,
        pipe: Any,
        concept_set: ConceptSet,
        patch: CrossAttentionPatch,
        originals: dict[str, Any],
        nbytes: int,
    ) -> None:
        self._pipe: Any = pipe
        self._concepts = concept_set
        self._patch = patch
        self._originals = originals
        self.nbytes = nbytes
        """Bytes the applied concepts hold (vectors, targets, embedding rows)."""

    @property
    def tokens(self) -> tuple[str, ...]:
        """The trigger tokens of the applied concepts, in the order given to :func:`apply`."""
        return self._concepts.tokens

    @property
    def active(self) -> bool:
        """False once :meth:`remove` has run."""
        return self._pipe is not None

    @property
    def concepts(self) -> ConceptSet:
        """The applied :class:`ConceptSet` (the handle's gate methods are its, by token)."""
        return self._concepts

    def gate(self, token: str) -> pf.Gate:
        """The (β, τ) the concept with ``token`` is applied with (UNKNOWN_CONCEPT if none)."""
        return pf.Gate(*self._concepts.gate(token))

    def set_gate(self, token: str, beta: float | None = None, tau: float | None = None) -> None:
        """Change one concept's β and/or τ; takes effect on the next pipeline call."""
        self._concepts.set_gate(token, beta, tau)

    def observe(self) -> AbstractContextManager[KVTrace]:
        """Record the edited K and V each attn2 layer hands to attention within the block::

            with handle.observe() as trace:
                pipe(prompt)
            keys = trace.keys["down_blocks.0.attentions.0.transformer_blocks.0.attn2"]

        One entry per UNet call and layer (:class:`~perfusion_runtime.processor.KVTrace`)."""
        return self._patch.observe()

    def clear_cache(self) -> None:
        """Drop the cached edited K and V of every layer (they are recomputed at the next call).

        Never needed after anything the cache can see (new encodings, ``set_gate``, LoRA
        scales, weights written in place, dtype or device moves: :mod:`perfusion_runtime.
        kv_cache`); only after writes that bypass PyTorch's version counters, such as
        ``weight.data.copy_(…)`` on a projection or ``prompt_embeds`` changed through NumPy."""
        self._patch.clear_cache()

    def remove(self) -> None:
        """Put back the original processors, embeddings, tokenizers and ``encode_prompt``, so
        the pipeline is exactly as before :func:`apply`. Calling it again does nothing."""
        pipe = self._pipe
        if pipe is None:
            return
        self._patch.remove()
        for encoder_name, tokenizer_name in _TEXT_COMPONENTS:
            if encoder_name in self._originals:
                getattr(pipe, encoder_name).set_input_embeddings(self._originals[encoder_name])
                setattr(pipe, tokenizer_name, self._originals[tokenizer_name])
        pipe.__dict__.pop("encode_prompt", None)
        compat.unguard(pipe)
        pipe.__dict__.pop(_HANDLE_ATTRIBUTE, None)
        _APPLIED.pop(self._patch.root, None)
        self._pipe = None

    def __enter__(self) -> PerfusionHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


def apply(
    pipe: Any,
    concepts: Sequence[ConceptSource] | ConceptSource,
    *,
    beta: float | None = None,
    tau: float | None = None,
    global_locking: bool = False,
    allow_base_mismatch: bool = False,
    kv_cache: bool = True,
) -> PerfusionHandle:
    """Apply Perfusion concepts to a diffusers Stable Diffusion pipeline.

    ``concepts`` are paths, file bytes or :class:`perfusion_format.Concept` objects (or one of
    them). ``beta``/``tau`` override every concept's default inference gate (each file carries
    its own); change them per concept later with :meth:`PerfusionHandle.set_gate`. With
    ``global_locking`` keys are computed from the prompt with each trigger token replaced by its
    superclass word. Several concepts combine as in the paper's appendix B. Each layer computes
    its edited keys and values once per generation and reuses them at the following denoising
    steps (:mod:`perfusion_runtime.kv_cache` says what that cache is keyed by); ``kv_cache=False``
    computes them at every step.

    Everything is checked before the pipeline is touched; refusals raise
    :class:`~perfusion_format.FormatError` (a bad file) or
    :class:`~perfusion_runtime.PerfusionRuntimeError` with FAMILY_MISMATCH, LAYER_MISMATCH,
    BASE_MISMATCH (unless ``allow_base_mismatch``, which warns instead), DUPLICATE_TOKEN,
    ALREADY_APPLIED, UNSUPPORTED_PIPELINE or INVALID_GATE.

    Load LoRA adapters and textual inversions before applying concepts: both compose with them.
    The edits are :func:`~perfusion_runtime.build_edits`'s, so a tool with its own model code
    that uses that function applies exactly what this does.
    """
    loaded = load_concepts(concepts)
    check_not_applied(pipe)
    layout = pipeline_layout(pipe)
    for concept in loaded:
        _check_fits(concept, layout)
        _check_base(concept, pipe, allow_base_mismatch)
    edits = build_edits(loaded, beta=beta, tau=tau)
    for token in edits.tokens:
        check_token_free(pipe, token)
    superclasses = edits.superclasses if global_locking else None
    return install(pipe, edits.layers, edits.embeddings, superclasses, kv_cache=kv_cache)


def install(
    pipe: Any,
    edits: dict[str, LayerEdit],
    rows: dict[str, torch.Tensor],
    superclasses: dict[str, str] | None = None,
    *,
    kv_cache: bool = True,
) -> PerfusionHandle:
    """Put prepared edits into ``pipe`` and return the handle that takes them out again.

    ``edits`` (one :class:`LayerEdit` per attn2 path, sharing one :class:`ConceptSet`) go on the
    UNet's processors; ``rows`` [N, d_enc] per text encoder are the concepts' embeddings, in the
    concept set's order, read by a :class:`ConceptEmbedding` behind a tokenizer that knows the
    tokens. With ``superclasses`` (token → word), global locking; ``kv_cache`` as in
    :func:`apply`. Only ALREADY_APPLIED is checked
    here: :func:`apply` validates the files first; training passes its trainable tensors.
    """
    check_not_applied(pipe)
    concept_set = next(iter(edits.values())).concepts
    tokens = list(concept_set.tokens)
    unet = compat.unwrap_compiled(pipe.unet)
    patch = patch_cross_attention(unet, edits, superclasses is not None, kv_cache)
    originals: dict[str, Any] = {}
    nbytes = concept_set.nbytes + sum(edit.nbytes for edit in edits.values())
    for encoder_name, tokenizer_name in _TEXT_COMPONENTS:
        encoder = getattr(pipe, encoder_name, None)
        if encoder is None:
            continue
        tokenizer = getattr(pipe, tokenizer_name)
        extended = extended_tokenizer(tokenizer, tokens)
        base = encoder.get_input_embeddings()
        embedding = ConceptEmbedding(base, len(tokenizer), rows[encoder_name])
        originals[encoder_name], originals[tokenizer_name] = base, tokenizer
        encoder.set_input_embeddings(embedding)
        setattr(pipe, tokenizer_name, extended)
        nbytes += embedding.rows.numel() * embedding.rows.element_size()
    compat.guard(pipe)
    if superclasses is not None:
        _wrap_encode_prompt(pipe, superclasses)
    handle = PerfusionHandle(pipe, concept_set, patch, originals, nbytes)
    pipe.__dict__[_HANDLE_ATTRIBUTE] = handle
    _APPLIED[unet] = handle
    return handle


def applied(pipe: Any) -> PerfusionHandle | None:
    """The handle of the concepts applied to ``pipe``, or None when it carries none.

    For tools that did not keep the handle :func:`apply` returned. A sibling pipeline built from
    ``pipe.components`` (img2img, inpaint) shares the UNet, so it reports the same handle.
    """
    handle = pipe.__dict__.get(_HANDLE_ATTRIBUTE)
    unet = getattr(pipe, "unet", None)
    if handle is None and unet is not None:
        handle = _APPLIED.get(compat.unwrap_compiled(unet))
    return handle


def unload(pipe: Any) -> bool:
    """Remove whatever concepts ``pipe`` (or a sibling sharing its UNet) carries, as
    :meth:`PerfusionHandle.remove` does; True if there were any."""
    handle = applied(pipe)
    if handle is None:
        return False
    handle.remove()
    return True
