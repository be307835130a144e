"""Putting a :class:`~perfusion_runtime.edit.LayerEdit` into a cross-attention module, and
patching a module tree.

Two kinds of module are patched:

- a diffusers ``Attention`` (the ``attn2`` of a transformer block) gets a
  :class:`PerfusionAttnProcessor`. It does not re-implement attention: it calls the processor it
  replaces (plain SDPA, xformers, a LoRA or IP-adapter processor …) with a thin view of the
  module whose ``to_k`` and ``to_v`` apply the edit around the module's own projections;
- any other module with ``to_k`` and ``to_v`` ``Linear`` layers (an LDM ``CrossAttention``, a
  tool's own class) gets an :class:`EditedProjection` in place of each, which calls the original
  Linear. The module's ``forward`` is untouched; it must call ``to_k``/``to_v`` on the text
  encodings (the context) and nothing else.

Removing the patch puts the original processor or Linear objects back.

Each layer keeps its last edited K and V in a :class:`~perfusion_runtime.kv_cache.KVCache` and
serves them again while the encodings, the projections, the gates and the mode are unchanged — at
every denoising step after the first of a generation (the key and why it cannot serve stale
values: :mod:`perfusion_runtime.kv_cache`). ``kv_cache=False`` computes them in every call.
:meth:`CrossAttentionPatch.observe` records the edited K and V each layer hands to attention.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from .edit import LayerEdit
from .errors import PerfusionRuntimeError, RuntimeErrorCode
from .kv_cache import KVCache

__all__ = [
    "CrossAttentionPatch",
    "EditedProjection",
    "KVTrace",
    "LayerKV",
    "PerfusionAttnProcessor",
    "patch_cross_attention",
]


@dataclass
class KVTrace:
    """The edited keys and values layers handed to attention while observed, by layer name, in
    call order (detached copies; cached ones included, so each call is seen)."""

    keys: dict[str, list[Tensor]] = field(default_factory=dict)
    values: dict[str, list[Tensor]] = field(default_factory=dict)


class LayerKV:
    """One layer's edited K and V: computed by its :class:`LayerEdit`, reused through its
    :class:`KVCache` (None: computed every call; never used for an edit that is being trained),
    and recorded while a :class:`KVTrace` observes it."""

    def __init__(self, name: str, edit: LayerEdit, kv_cache: bool) -> None:
        self.name = name
        self.edit = edit
        self.cache: KVCache | None = KVCache() if kv_cache else None
        self.trace: KVTrace | None = None

    def _get(
        self, slot: str, encodings: Tensor, projection: nn.Module, compute: Callable[[], Tensor]
    ) -> Tensor:
        cache = None if self.edit.trainable else self.cache
        if cache is None:
            output = compute()
        else:
            output = cache.get(slot, encodings, projection, self.edit.concepts.version, compute)
        if self.trace is not None:
            recorded = self.trace.keys if slot == "k" else self.trace.values
            recorded.setdefault(self.name, []).append(output.detach().clone())
        return output

    def keys(self, encodings: Tensor, projection: nn.Module) -> Tensor:
        """The edited keys of ``encodings``, projected by ``projection`` (the layer's to_k)."""
        return self._get("k", encodings, projection, lambda: self.edit.keys(encodings, projection))

    def locked_keys(self, superclass_encodings: Tensor, projection: nn.Module) -> Tensor:
        """Global locking: the unedited keys of the superclass prompt's encodings."""
        return self._get(
            "k", superclass_encodings, projection, lambda: projection(superclass_encodings)
        )

    def values(self, encodings: Tensor, projection: nn.Module) -> Tensor:
        """The edited values of ``encodings``, projected by ``projection`` (the layer's to_v)."""
        return self._get(
            "v", encodings, projection, lambda: self.edit.values(encodings, projection)
        )


class _EditedAttention:
    """A view of a diffusers ``Attention`` module whose ``to_k``/``to_v`` carry the edit.

    Every other attribute is the module's own. With ``key_encodings`` (global locking) the keys are
    projected from those encodings, unedited, whatever the processor passes to ``to_k``.
    """

    def __init__(self, attention: nn.Module, layer: LayerKV, key_encodings: Tensor | None) -> None:
        self._attention = attention
        self._layer = layer
        self._key_encodings = key_encodings

    def __getattr__(self, name: str) -> Any:
        return getattr(self._attention, name)

    def to_k(self, encodings: Tensor) -> Tensor:
        attention = self._attention
        keys = self._key_encodings
        if keys is None:
            return self._layer.keys(encodings, attention.to_k)
        if attention.norm_cross:  # the norm's own state is not in the cache's key
            return attention.to_k(attention.norm_encoder_hidden_states(keys))
        return self._layer.locked_keys(keys, attention.to_k)

    def to_v(self, encodings: Tensor) -> Tensor:
        return self._layer.values(encodings, self._attention.to_v)


class PerfusionAttnProcessor:
    """Wraps a diffusers cross-attention layer's processor so that its keys and values carry the
    edit.

    With ``global_locking`` the encoder states arrive as [B, 2T, d]: the concept prompt's
    encodings then the superclass prompt's; values come from the first half (edited), keys from
    the second (unedited). Self-attention calls (no encoder states) pass through untouched.

    ``layer`` computes, caches and records the edited K and V (:class:`LayerKV`).
    """

    def __init__(self, inner: Any, layer: LayerKV, global_locking: bool = False) -> None:
        self.inner = inner
        self.layer = layer
        self.global_locking = global_locking

    @property
    def edit(self) -> LayerEdit:
        """The layer's edit."""
        return self.layer.edit

    @property
    def cache(self) -> KVCache | None:
        """The layer's K/V cache (None with ``kv_cache=False``)."""
        return self.layer.cache

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Tensor:
        if encoder_hidden_states is None:
            return self.inner(attn, hidden_states, None, *args, **kwargs)
        key_encodings = None
        if self.global_locking:
            encoder_hidden_states, key_encodings = self.edit.concepts.split(encoder_hidden_states)
        view = _EditedAttention(attn, self.layer, key_encodings)
        return self.inner(view, hidden_states, encoder_hidden_states, *args, **kwargs)


class EditedProjection(nn.Module):
    """Stands in for the ``to_k`` (``slot="k"``) or ``to_v`` (``slot="v"``) Linear of a
    cross-attention module that is not a diffusers ``Attention``: its output is the edited keys
    or values of the encodings it is called with.

    The original Linear is its submodule ``projection`` (so moving the model moves it; while
    patched, the module's state-dict keys gain ``.projection``: patch after loading weights).
    With ``global_locking`` the encodings arrive as [B, 2T, d] (concept prompt, then superclass
    prompt) and each half is taken as :class:`PerfusionAttnProcessor` takes it.
    """

    def __init__(self, projection: nn.Module, layer: LayerKV, slot: str, global_locking: bool):
        super().__init__()
        self.projection = projection
        self.slot = slot
        self.global_locking = global_locking
        self._layer = layer

    @property
    def weight(self) -> Tensor:
        """The original Linear's weight (code that reads ``to_k.weight`` still finds it)."""
        return self.projection.weight

    def forward(self, encodings: Tensor) -> Tensor:
        layer = self._layer
        if not self.global_locking:
            if self.slot == "k":
                return layer.keys(encodings, self.projection)
            return layer.values(encodings, self.projection)
        concept, superclass = layer.edit.concepts.split(encodings)
        if self.slot == "k":
            return layer.locked_keys(superclass, self.projection)
        return layer.values(concept, self.projection)


@dataclass
class CrossAttentionPatch:
    """The layers a patch changed, by module path: :meth:`remove` puts back the processors
    (diffusers ``Attention``) and the ``to_k``/``to_v`` Linears (other modules) it replaced."""

    root: nn.Module
    originals: dict[str, Any]
    installed: dict[str, LayerKV] = field(default_factory=dict)

    def clear_cache(self) -> None:
        """Drop every layer's cached K and V."""
        for layer in self.installed.values():
            if layer.cache is not None:
                layer.cache.clear()

    @contextmanager
    def observe(self) -> Iterator[KVTrace]:
        """Within the block, record the edited K and V every patched layer hands to attention::

            with patch.observe() as trace:
                pipe(prompt)
            trace.keys["…attn2"][0]   # the first call's keys, [B, T, m]

        For debugging: each call's tensors are copied, which costs memory and time."""
        trace = KVTrace()
        for layer in self.installed.values():
            layer.trace = trace
        try:
            yield trace
        finally:
            for layer in self.installed.values():
                layer.trace = None

    def remove(self) -> None:
        """Restore every original processor or Linear object and drop the cached K and V
        (idempotent)."""
        self.clear_cache()
        for path, original in self.originals.items():
            module = self.root.get_submodule(path)
            if hasattr(module, "set_processor"):
                module.set_processor(original)
            else:
                module.to_k, module.to_v = original
        self.originals = {}
        self.installed = {}


def _patchable(module: nn.Module) -> bool:
    """A module with ``to_k`` and ``to_v`` Linear layers (or LoRA wrappers of them)."""
    return all(
        isinstance(getattr(module, name, None), nn.Module)
        and hasattr(getattr(module, name), "weight")
        for name in ("to_k", "to_v")
    )


def patch_cross_attention(
    root: nn.Module,
    edits: Mapping[str, LayerEdit],
    global_locking: bool = False,
    kv_cache: bool = True,
) -> CrossAttentionPatch:
    """Put each layer's edit into the module ``edits`` names (paths relative to ``root``, e.g. a
    UNet's ``…transformer_blocks.0.attn2``, or ``input_blocks.1.1.transformer_blocks.0.attn2``
    in an LDM UNet — :func:`~perfusion_runtime.build_edits` names layers either way).

    A diffusers ``Attention`` gets a :class:`PerfusionAttnProcessor`; any other module with
    ``to_k`` and ``to_v`` Linear layers gets an :class:`EditedProjection` for each. Every path is
    checked before anything changes: a path that is missing, or names a module that is neither,
    raises LAYER_MISMATCH; one that is already patched, ALREADY_APPLIED. ``global_locking``: the
    encodings are [concept prompt ‖ superclass prompt] along the sequence axis.
    ``kv_cache=False``: compute the edited K and V in every call instead of once per generation.
    """
    modules = {}
    for path, edit in edits.items():
        try:
            module = root.get_submodule(path)
        except AttributeError:
            module = None
        if module is None or not _patchable(module):
            raise PerfusionRuntimeError(
                RuntimeErrorCode.LAYER_MISMATCH,
                f"{path!r} is not a cross-attention module with to_k and to_v in this model",
            )
        if isinstance(getattr(module, "processor", None), PerfusionAttnProcessor) or isinstance(
            module.to_k, EditedProjection
        ):
            raise PerfusionRuntimeError(
                RuntimeErrorCode.ALREADY_APPLIED, f"{path!r} already carries concepts"
            )
        modules[path] = (module, edit)
    patch = CrossAttentionPatch(root, {})
    for path, (module, edit) in modules.items():
        layer = LayerKV(path, edit, kv_cache)
        if hasattr(module, "set_processor"):
            patch.originals[path] = module.processor
            module.set_processor(PerfusionAttnProcessor(module.processor, layer, global_locking))
        else:
            patch.originals[path] = (module.to_k, module.to_v)
            module.to_k = EditedProjection(module.to_k, layer, "k", global_locking)
            module.to_v = EditedProjection(module.to_v, layer, "v", global_locking)
        patch.installed[path] = layer
    return patch
