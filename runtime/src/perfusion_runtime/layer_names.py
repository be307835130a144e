"""Cross-attention layer names in the two namings a Stable Diffusion UNet is known by.

Concept files name layers by their diffusers module path (``down_blocks.0.attentions.1.
transformer_blocks.0.attn2``); the original LDM/SGM code — and the tools built on it, such as
ComfyUI and A1111 — name the same module ``input_blocks.2.1.transformer_blocks.0.attn2``. With
n res blocks per level (``layers_per_block``: 2 in SD 1.x, 2.x and XL), a down level has n
attentions and an up level n + 1, and the LDM UNet numbers its blocks across levels:

====================================  ==========================================
diffusers                             LDM / SGM
====================================  ==========================================
``down_blocks.{l}.attentions.{a}``    ``input_blocks.{l·(n+1) + a + 1}.1``
``mid_block.attentions.0``            ``middle_block.1``
``up_blocks.{l}.attentions.{a}``      ``output_blocks.{l·(n+1) + a}.1``
====================================  ==========================================

each followed by ``.transformer_blocks.{t}.attn2``. Checkpoints often prefix LDM names with
``model.diffusion_model.``; :func:`ldm_to_diffusers` accepts the prefix, :func:`diffusers_to_ldm`
never writes it (patch the module the prefix leads to).
"""

from __future__ import annotations

import re

__all__ = ["diffusers_to_ldm", "ldm_to_diffusers"]

_LDM_ATTN2 = re.compile(
    r"(?:model\.diffusion_model\.)?"
    r"(?:input_blocks\.(?P<input>[0-9]+)\.1|middle_block\.1|output_blocks\.(?P<output>[0-9]+)\.1)"
    r"\.transformer_blocks\.(?P<block>[0-9]+)\.attn2"
)
_DIFFUSERS_ATTN2 = re.compile(
    r"(?:down_blocks\.(?P<down>[0-9]+)\.attentions\.(?P<down_attention>[0-9]+)"
    r"|mid_block\.attentions\.0"
    r"|up_blocks\.(?P<up>[0-9]+)\.attentions\.(?P<up_attention>[0-9]+))"
    r"\.transformer_blocks\.(?P<block>[0-9]+)\.attn2"
)


def ldm_to_diffusers(path: str, layers_per_block: int = 2) -> str | None:
    """The diffusers path of an LDM/SGM cross-attention module path, or None if it is not one.

    ``input_blocks.{i}.1`` → ``down_blocks.{(i−1)//(n+1)}.attentions.{(i−1)%(n+1)}``,
    ``middle_block.1`` → ``mid_block.attentions.0``, ``output_blocks.{j}.1`` →
    ``up_blocks.{j//(n+1)}.attentions.{j%(n+1)}``, each ``….transformer_blocks.{t}.attn2``, with
    n = ``layers_per_block``; an optional ``model.diffusion_model.`` prefix is dropped.
    """
    match = _LDM_ATTN2.fullmatch(path)
    if match is None:
        return None
    per_level = layers_per_block + 1
    if match["input"] is not None:
        level, attention = divmod(int(match["input"]) - 1, per_level)
        if level < 0 or attention >= layers_per_block:  # the input conv or a downsampler
            return None
        block = f"down_blocks.{level}.attentions.{attention}"
    elif match["output"] is not None:
        level, attention = divmod(int(match["output"]), per_level)
        block = f"up_blocks.{level}.attentions.{attention}"
    else:
        block = "mid_block.attentions.0"
    return f"{block}.transformer_blocks.{int(match['block'])}.attn2"


def diffusers_to_ldm(path: str, layers_per_block: int = 2) -> str | None:
    """The LDM/SGM path of a diffusers cross-attention module path, or None if it is not one
    (or names an attention a UNet with ``layers_per_block`` res blocks per level cannot have).

    The inverse of :func:`ldm_to_diffusers`: ``down_blocks.{l}.attentions.{a}`` →
    ``input_blocks.{l·(n+1) + a + 1}.1``, ``mid_block.attentions.0`` → ``middle_block.1``,
    ``up_blocks.{l}.attentions.{a}`` → ``output_blocks.{l·(n+1) + a}.1``.
    """
    match = _DIFFUSERS_ATTN2.fullmatch(path)
    if match is None:
        return None
    per_level = layers_per_block + 1
    if match["down"] is not None:
        attention = int(match["down_attention"])
        if attention >= layers_per_block:
            return None
        block = f"input_blocks.{int(match['down']) * per_level + attention + 1}.1"
    elif match["up"] is not None:
        attention = int(match["up_attention"])
        if attention >= per_level:
            return None
        block = f"output_blocks.{int(match['up']) * per_level + attention}.1"
    else:
        block = "middle_block.1"
    return f"{block}.transformer_blocks.{int(match['block'])}.attn2"
