"""The cross-attention part of an LDM UNet, written as the original latent-diffusion code writes
it — no diffusers: ``SpatialTransformer`` → ``BasicTransformerBlock`` → ``CrossAttention`` with
``to_q``/``to_k``/``to_v``/``to_out`` Linears — and a container that puts one spatial transformer
at each position an LDM UNet has one (``input_blocks.{i}.1``, ``middle_block.1``,
``output_blocks.{j}.1``), so module paths are the LDM ones a ComfyUI or A1111 model has.

This is the "tool with its own model code" of ``examples/ldm_model/README.md``; nothing in it
knows about Perfusion.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

__all__ = [
    "BasicTransformerBlock",
    "CrossAttention",
    "LDMTransformers",
    "SpatialTransformer",
    "expanded_embedding",
]


class CrossAttention(nn.Module):
    """Multi-head attention over ``context`` (self-attention when it is None), as in LDM."""

    def __init__(self, query_dim: int, context_dim: int | None, heads: int, dim_head: int) -> None:
        super().__init__()
        inner = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.scale = dim_head**-0.5
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)

        def split(t: Tensor) -> Tensor:  # [B, T, h·d] → [B·h, T, d]
            b, n, _ = t.shape
            return t.reshape(b, n, self.heads, -1).transpose(1, 2).reshape(b * self.heads, n, -1)

        q, k, v = split(q), split(k), split(v)
        weights = torch.softmax(torch.einsum("bid,bjd->bij", q, k) * self.scale, dim=-1)
        out = torch.einsum("bij,bjd->bid", weights, v)
        b = x.shape[0]
        out = (
            out.reshape(b, self.heads, out.shape[1], -1).transpose(1, 2).reshape(b, x.shape[1], -1)
        )
        return self.to_out(out)


class _GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: Tensor) -> Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * nn.functional.gelu(gate)


class _FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(_GEGLU(dim, inner), nn.Dropout(0.0), nn.Linear(inner, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention over the text (``attn2``), feed-forward; pre-norm."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, None, heads, dim_head)
        self.ff = _FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context=context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """Transformer blocks over the pixels of a feature map [B, C, H, W], with a residual."""

    def __init__(
        self,
        channels: int,
        heads: int,
        dim_head: int,
        context_dim: int,
        depth: int = 1,
        groups: int = 32,
        use_linear: bool = False,
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        self.use_linear = use_linear
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        if use_linear:
            self.proj_in: nn.Module = nn.Linear(channels, inner)
            self.proj_out: nn.Module = nn.Linear(inner, channels)
        else:
            self.proj_in = nn.Conv2d(channels, inner, kernel_size=1)
            self.proj_out = nn.Conv2d(inner, channels, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, context_dim) for _ in range(depth)
        )

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        b, _, h, w = x.shape
        residual = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.permute(0, 2, 3, 1).reshape(b, h * w, -1)
        if self.use_linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context)
        if self.use_linear:
            x = self.proj_out(x)
        x = x.reshape(b, h, w, -1).permute(0, 3, 1, 2)
        if not self.use_linear:
            x = self.proj_out(x)
        return x + residual


class LDMTransformers(nn.Module):
    """Spatial transformers at LDM UNet positions: ``blocks`` maps a position
    (``input_blocks.1.1``, ``middle_block.1``, ``output_blocks.3.1`` …) to its transformer, and
    ``get_submodule(f"{position}.transformer_blocks.0.attn2")`` finds its cross-attention.
    """

    def __init__(self, blocks: Mapping[str, SpatialTransformer]) -> None:
        super().__init__()
        for position, block in blocks.items():
            parent: nn.Module = self
            *path, last = position.split(".")
            for part in path:
                if not hasattr(parent, part):
                    parent.add_module(part, nn.ModuleDict())
                parent = getattr(parent, part)
            parent.add_module(last, block)
        self.positions = tuple(blocks)

    def forward(self, position: str, x: Tensor, context: Tensor) -> Tensor:
        """The transformer at ``position`` run on the feature map ``x`` and text ``context``."""
        return self.get_submodule(position)(x, context)


def expanded_embedding(table: nn.Embedding, rows: Tensor) -> nn.Embedding:
    """``table`` with ``rows`` [N, d] appended: token ids ``len(table)…len(table)+N−1`` are new.

    How a tool gives its own text encoder the concepts' trigger tokens (their rows are
    ``pr.build_edits(...).embeddings["text_encoder"]``)."""
    weight = torch.cat([table.weight.detach(), rows.to(table.weight.dtype)])
    expanded = nn.Embedding(weight.shape[0], weight.shape[1], _weight=weight)
    expanded.to(table.weight.device)
    return expanded
