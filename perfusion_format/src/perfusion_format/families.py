"""Base-model families and their cross-attention layer tables (no model download needed).

A family fixes what a concept file for it must carry: one token embedding per text encoder, the
text dimension ``d`` (the encoders' widths added up — SDXL concatenates its two encoders), and the
list of cross-attention layers (``attn2`` of every diffusers ``BasicTransformerBlock`` of the UNet)
with their output width ``m_ℓ``. The ``custom`` family is for SD-shaped models of other sizes (tiny
test and research models): its layers are whatever the file carries, checked for consistency only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["FAMILIES", "Family", "get_family"]


@dataclass(frozen=True)
class Family:
    """One base-model family.

    ``text_encoders`` is ``((component name, width), ...)`` in diffusers' component order;
    ``layers`` is ``((attn2 module path, m_ℓ), ...)`` in UNet order, or ``None`` for ``custom``.
    """

    name: str
    text_encoders: tuple[tuple[str, int], ...]
    layers: tuple[tuple[str, int], ...] | None
    modelspec_architecture: str

    @property
    def text_dim(self) -> int | None:
        """``d``: the width of the token encodings the edit sees (None for ``custom``)."""
        if self.name == "custom":
            return None
        return sum(width for _, width in self.text_encoders)

    @property
    def total_width(self) -> int:
        """Σ m_ℓ over all layers: the floats one set of (key or value) targets takes."""
        return sum(width for _, width in self.layers or ())


def _blocks(
    prefix: str, blocks: tuple[tuple[int, int, int, int], ...]
) -> Iterator[tuple[str, int]]:
    """Yield ``(path, width)`` for ``(block index, attentions, transformer depth, width)`` rows."""
    for block, attentions, depth, width in blocks:
        for attention in range(attentions):
            for transformer in range(depth):
                path = (
                    f"{prefix}.{block}.attentions.{attention}"
                    f".transformer_blocks.{transformer}.attn2"
                )
                yield path, width


def _mid(depth: int, width: int) -> Iterator[tuple[str, int]]:
    """Yield ``(path, width)`` for the mid block's single attention of ``depth`` transformers."""
    for transformer in range(depth):
        yield f"mid_block.attentions.0.transformer_blocks.{transformer}.attn2", width


# SD 1.x / 2.x: CrossAttnDownBlock2D ×3 (2 attentions, depth 1), DownBlock2D; a mid block of
# depth 1; UpBlock2D, then CrossAttnUpBlock2D ×3 (3 attentions, depth 1).
_SD_LAYERS = (
    *_blocks("down_blocks", ((0, 2, 1, 320), (1, 2, 1, 640), (2, 2, 1, 1280))),
    *_mid(1, 1280),
    *_blocks("up_blocks", ((1, 3, 1, 1280), (2, 3, 1, 640), (3, 3, 1, 320))),
)

# SDXL: DownBlock2D, CrossAttnDownBlock2D (depth 2, 640), CrossAttnDownBlock2D (depth 10, 1280);
# a mid block of depth 10; CrossAttnUpBlock2D (depth 10, 1280), CrossAttnUpBlock2D (depth 2, 640).
_SDXL_LAYERS = (
    *_blocks("down_blocks", ((1, 2, 2, 640), (2, 2, 10, 1280))),
    *_mid(10, 1280),
    *_blocks("up_blocks", ((0, 3, 10, 1280), (1, 3, 2, 640))),
)

FAMILIES: dict[str, Family] = {
    "sd-1": Family(
        name="sd-1",
        text_encoders=(("text_encoder", 768),),
        layers=_SD_LAYERS,
        modelspec_architecture="stable-diffusion-v1/perfusion",
    ),
    "sd-2": Family(
        name="sd-2",
        text_encoders=(("text_encoder", 1024),),
        layers=_SD_LAYERS,
        modelspec_architecture="stable-diffusion-v2/perfusion",
    ),
    "sdxl": Family(
        name="sdxl",
        text_encoders=(("text_encoder", 768), ("text_encoder_2", 1280)),
        layers=_SDXL_LAYERS,
        modelspec_architecture="stable-diffusion-xl-v1-base/perfusion",
    ),
    "custom": Family(
        name="custom",
        text_encoders=(("text_encoder", 0), ("text_encoder_2", 0)),
        layers=None,
        modelspec_architecture="perfusion",
    ),
}


def get_family(name: str) -> Family:
    """Return the family called ``name`` (``sd-1``, ``sd-2``, ``sdxl`` or ``custom``).

    Raises ``KeyError`` for any other name; the validator turns that into INVALID_FIELD.
    """
    return FAMILIES[name]
