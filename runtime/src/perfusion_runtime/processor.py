"""The attention processor that applies a :class:`~perfusion_runtime.edit.LayerEdit` to one
diffusers ``Attention`` module (the ``attn2`` of a transformer block), and patching a module tree.

The processor does not re-implement attention: it calls the processor it replaces (plain SDPA,
xformers, a LoRA or IP-adapter processor …) with a thin view of the ``Attention`` module whose
``to_k`` and ``to_v`` apply the edit around the module's own projections. Removing it puts the
original processor object back.

Each processor keeps its layer's last edited K and V in a :class:`~perfusion_runtime.kv_cache.
KVCache` and serves them again while the encodings, the projections, the gates and the mode are
unchanged — at every denoising step after the first of a generation (the key and why it cannot
serve stale values: :mod:`perfusion_runtime.kv_cache`). ``kv_cache=False`` computes them in every
call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from .edit import LayerEdit
from .kv_cache import KVCache

__all__ = ["CrossAttentionPatch", "PerfusionAttnProcessor", "patch_cross_attention"]


class _EditedAttention:
    """A view of an ``Attention`` module whose ``to_k``/``to_v`` carry the edit.

    Every other attribute is the module's own. With ``key_encodings`` (global locking) the keys are
    projected from those encodings, unedited, whatever the processor passes to ``to_k``.
    """

    def __init__(
        self,
        attention: nn.Module,
        edit: LayerEdit,
        key_encodings: Tensor | None,
        cache: KVCache | None,
    ) -> None:
        self._attention = attention
        self._edit = edit
        self._key_encodings = key_encodings
        self._cache = cache

    def __getattr__(self, name: str) -> Any:
        return getattr(self._attention, name)

    def _cached(self, slot: str, encodings: Tensor, projection: nn.Module, compute: Any) -> Tensor:
        if self._cache is None:
            return compute()
        return self._cache.get(slot, encodings, projection, self._edit.concepts.version, compute)

    def to_k(self, encodings: Tensor) -> Tensor:
        attention = self._attention
        keys = self._key_encodings
        if keys is None:
            return self._cached(
                "k", encodings, attention.to_k, lambda: self._edit.keys(encodings, attention.to_k)
            )
        if attention.norm_cross:  # the norm's own state is not in the cache's key
            return attention.to_k(attention.norm_encoder_hidden_states(keys))
        return self._cached("k", keys, attention.to_k, lambda: attention.to_k(keys))

    def to_v(self, encodings: Tensor) -> Tensor:
        attention = self._attention
        return self._cached(
            "v", encodings, attention.to_v, lambda: self._edit.values(encodings, attention.to_v)
        )


class PerfusionAttnProcessor:
    """Wraps a cross-attention layer's processor so that its keys and values carry the edit.

    With ``global_locking`` the encoder states arrive as [B, 2T, d]: the concept prompt's
    encodings then the superclass prompt's; values come from the first half (edited), keys from
    the second (unedited). Self-attention calls (no encoder states) pass through untouched.

    With ``kv_cache`` (the default) the edited K and V are kept in :attr:`cache` and reused while
    nothing they depend on changes (:mod:`perfusion_runtime.kv_cache`); never for an edit whose
    targets require grad.
    """

    def __init__(
        self, inner: Any, edit: LayerEdit, global_locking: bool = False, kv_cache: bool = True
    ) -> None:
        self.inner = inner
        self.edit = edit
        self.global_locking = global_locking
        self.cache: KVCache | None = KVCache() if kv_cache else None

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
        cache = None if self.edit.trainable else self.cache
        view = _EditedAttention(attn, self.edit, key_encodings, cache)
        return self.inner(view, hidden_states, encoder_hidden_states, *args, **kwargs)


@dataclass
class CrossAttentionPatch:
    """The processors a patch replaced, by module path; :meth:`remove` puts them back."""

    root: nn.Module
    originals: dict[str, Any]
    installed: dict[str, PerfusionAttnProcessor] = field(default_factory=dict)

    def clear_cache(self) -> None:
        """Drop every installed processor's cached K and V."""
        for processor in self.installed.values():
            if processor.cache is not None:
                processor.cache.clear()

    def remove(self) -> None:
        """Restore every original processor object and drop the cached K and V (idempotent)."""
        self.clear_cache()
        for path, processor in self.originals.items():
            self.root.get_submodule(path).set_processor(processor)
        self.originals = {}
        self.installed = {}


def patch_cross_attention(
    root: nn.Module,
    edits: Mapping[str, LayerEdit],
    global_locking: bool = False,
    kv_cache: bool = True,
) -> CrossAttentionPatch:
    """Install a :class:`PerfusionAttnProcessor` on each diffusers ``Attention`` module named in
    ``edits`` (paths relative to ``root``, e.g. a UNet's ``…transformer_blocks.0.attn2``).

    Works on any module tree built from diffusers ``Attention`` modules, inside a pipeline or not.
    ``kv_cache=False``: compute the edited K and V in every call instead of once per generation.
    """
    patch = CrossAttentionPatch(root, {})
    for path, edit in edits.items():
        attention = root.get_submodule(path)
        processor = PerfusionAttnProcessor(attention.processor, edit, global_locking, kv_cache)
        patch.originals[path] = attention.processor
        patch.installed[path] = processor
        attention.set_processor(processor)
    return patch
