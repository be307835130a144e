"""The attention processor that applies a :class:`~perfusion_runtime.edit.LayerEdit` to one
diffusers ``Attention`` module (the ``attn2`` of a transformer block), and patching a module tree.

The processor does not re-implement attention: it calls the processor it replaces (plain SDPA,
xformers, a LoRA or IP-adapter processor …) with a thin view of the ``Attention`` module whose
``to_k`` and ``to_v`` apply the edit around the module's own projections. Removing it puts the
original processor object back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from .edit import LayerEdit

__all__ = ["CrossAttentionPatch", "PerfusionAttnProcessor", "patch_cross_attention"]


class _EditedAttention:
    """A view of an ``Attention`` module whose ``to_k``/``to_v`` carry the edit.

    Every other attribute is the module's own. With ``key_encodings`` (global locking) the keys are
    projected from those encodings, unedited, whatever the processor passes to ``to_k``.
    """

    def __init__(self, attention: nn.Module, edit: LayerEdit, key_encodings: Tensor | None) -> None:
        self._attention = attention
        self._edit = edit
        self._key_encodings = key_encodings

    def __getattr__(self, name: str) -> Any:
        return getattr(self._attention, name)

    def to_k(self, encodings: Tensor) -> Tensor:
        if self._key_encodings is not None:
            keys = self._key_encodings
            if self._attention.norm_cross:
                keys = self._attention.norm_encoder_hidden_states(keys)
            return self._attention.to_k(keys)
        return self._edit.keys(encodings, self._attention.to_k)

    def to_v(self, encodings: Tensor) -> Tensor:
        return self._edit.values(encodings, self._attention.to_v)


class PerfusionAttnProcessor:
    """Wraps a cross-attention layer's processor so that its keys and values carry the edit.

    With ``global_locking`` the encoder states arrive as [B, 2T, d]: the concept prompt's
    encodings then the superclass prompt's; values come from the first half (edited), keys from
    the second (unedited). Self-attention calls (no encoder states) pass through untouched.
    """

    def __init__(self, inner: Any, edit: LayerEdit, global_locking: bool = False) -> None:
        self.inner = inner
        self.edit = edit
        self.global_locking = global_locking

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
        view = _EditedAttention(attn, self.edit, key_encodings)
        return self.inner(view, hidden_states, encoder_hidden_states, *args, **kwargs)


@dataclass
class CrossAttentionPatch:
    """The processors a patch replaced, by module path; :meth:`remove` puts them back."""

    root: nn.Module
    originals: dict[str, Any]

    def remove(self) -> None:
        """Restore every original processor object (idempotent)."""
        for path, processor in self.originals.items():
            self.root.get_submodule(path).set_processor(processor)
        self.originals = {}


def patch_cross_attention(
    root: nn.Module, edits: Mapping[str, LayerEdit], global_locking: bool = False
) -> CrossAttentionPatch:
    """Install a :class:`PerfusionAttnProcessor` on each diffusers ``Attention`` module named in
    ``edits`` (paths relative to ``root``, e.g. a UNet's ``…transformer_blocks.0.attn2``).

    Works on any module tree built from diffusers ``Attention`` modules, inside a pipeline or not.
    """
    originals = {}
    for path, edit in edits.items():
        attention = root.get_submodule(path)
        originals[path] = attention.processor
        attention.set_processor(PerfusionAttnProcessor(attention.processor, edit, global_locking))
    return CrossAttentionPatch(root, originals)
