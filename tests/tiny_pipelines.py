"""Tiny, SD-shaped diffusers pipelines with random weights, built entirely offline.

The pipelines have the layout of the real base models (text encoders, a UNet whose transformer
blocks carry ``attn2`` cross-attention, a VAE, an SD-style scheduler) at a size where a 32×32
image takes milliseconds on a CPU. Nothing is downloaded: the CLIP tokenizer is a byte-level BPE
tokenizer written here, whose vocabulary holds the 256 byte characters and one token for each
word of a small word list.

Text width ``d`` (what the UNet's cross-attention reads) per kind:

=======  ==============================================  ===
kind     text encoders                                   d
=======  ==============================================  ===
sd-1     ``text_encoder`` (32)                           32
sd-2     ``text_encoder`` (48)                           48
sdxl     ``text_encoder`` (32), ``text_encoder_2`` (32)  64
=======  ==============================================  ===

Usage::

    from tiny_pipelines import build_pipeline, save_pipeline

    pipe = build_pipeline("sd-1")
    image = pipe("a photo of a teddy", num_inference_steps=2, height=32, width=32).images[0]
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Literal

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

#: Where :func:`build_pipeline` puts the pipelines: the CPU, or ``PFX_TEST_DEVICE``
#: (``PFX_TEST_DEVICE=cuda pytest tests/runtime`` runs the runtime's tests on a GPU).
TEST_DEVICE = os.environ.get("PFX_TEST_DEVICE", "cpu")

__all__ = [
    "DEFAULT_WORDS",
    "IMAGE_SIZE",
    "TEST_DEVICE",
    "TEXT_DIMS",
    "PipelineKind",
    "build_clip_tokenizer",
    "build_pipeline",
    "bytes_to_unicode",
    "clip_tokenizer",
    "clip_vocabulary",
    "save_pipeline",
    "write_clip_tokenizer",
]

PipelineKind = Literal["sd-1", "sd-2", "sdxl"]

#: Words the tiny tokenizer encodes as a single token each (lowercase, letters only).
DEFAULT_WORDS: tuple[str, ...] = (
    "a", "an", "the", "photo", "of", "in", "on", "with", "and", "at", "is",
    "teddy", "bear", "teapot", "cat", "dog", "toy", "sailing", "boat", "sea", "beach",
    "red", "blue", "green", "table", "kitchen", "garden", "picture", "painting", "sitting",
    "close", "up", "small", "big", "wooden", "car", "house", "tree", "flower", "sky", "cup",
    "person", "man", "woman",
)  # fmt: skip

#: Image side in pixels the pipelines are sized for (the UNet's latent side is half of it).
IMAGE_SIZE = 32
#: ``d`` per kind: the summed widths of the text encodings the UNet's cross-attention reads.
TEXT_DIMS: dict[str, int] = {"sd-1": 32, "sd-2": 48, "sdxl": 64}

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
MODEL_MAX_LENGTH = 77


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters.

    Printable Latin-1 bytes map to themselves; the others (control characters, space, ...) map to
    the characters from U+0100 on, in byte order. Byte-level BPE works on these characters.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {byte: chr(byte) for byte in printable}
    shifted = 0
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = chr(256 + shifted)
            shifted += 1
    return mapping


def _symbols(word: str, byte_chars: dict[int, str]) -> list[str]:
    """The initial BPE symbols of ``word``: its byte characters, the last one ending in ``</w>``."""
    chars = [byte_chars[byte] for byte in word.encode("utf-8")]
    chars[-1] += END_OF_WORD
    return chars


def _check_words(words: Iterable[str]) -> list[str]:
    """Lowercase and deduplicate ``words`` (in order); each must be letters only, as CLIP's
    pre-tokenizer would otherwise split it."""
    checked = list(dict.fromkeys(word.lower() for word in words))
    bad = [word for word in checked if not word.isalpha()]
    if bad:
        raise ValueError(f"words must be non-empty and letters only: {bad}")
    return checked


def _train_bpe(words: list[str]) -> list[tuple[str, str]]:
    """The merges of a byte-level BPE under which every word of ``words`` is one token.

    Classic BPE training on the word list (each word counted once): repeatedly merge the most
    frequent adjacent pair (ties broken by the pair's text) until every word is a single symbol.
    Applying the merges in rank order, as the tokenizer does, then rebuilds each word exactly.
    """
    byte_chars = bytes_to_unicode()
    pieces = [_symbols(word, byte_chars) for word in words]
    merges: list[tuple[str, str]] = []
    while True:
        counts = Counter(pair for piece in pieces for pair in pairwise(piece))
        if not counts:
            break
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        pieces = [_merge(piece, best) for piece in pieces]
    return merges


def _merge(piece: list[str], pair: tuple[str, str]) -> list[str]:
    """``piece`` with every occurrence of ``pair`` (left to right, not overlapping) joined."""
    merged: list[str] = []
    index = 0
    while index < len(piece):
        if index + 1 < len(piece) and (piece[index], piece[index + 1]) == pair:
            merged.append(piece[index] + piece[index + 1])
            index += 2
        else:
            merged.append(piece[index])
            index += 1
    return merged


def clip_vocabulary(merges: Iterable[tuple[str, str]]) -> dict[str, int]:
    """The vocabulary of a byte-level BPE with ``merges``, in CLIP's layout: the 256 byte
    characters, the same with ``</w>``, each merge's result (in merge order, first occurrence),
    then ``<|startoftext|>`` and ``<|endoftext|>``."""
    alphabet = list(bytes_to_unicode().values())
    tokens = [*alphabet, *(char + END_OF_WORD for char in alphabet)]
    tokens += ["".join(pair) for pair in merges]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    vocab[BOS_TOKEN] = len(vocab)
    vocab[EOS_TOKEN] = len(vocab)
    return vocab


def clip_tokenizer(merges: Sequence[tuple[str, str]]) -> CLIPTokenizer:
    """A CLIP tokenizer (``model_max_length`` 77) for the byte-level BPE with ``merges``, its
    vocabulary :func:`clip_vocabulary`'s."""
    return CLIPTokenizer(
        vocab=clip_vocabulary(merges), merges=list(merges), model_max_length=MODEL_MAX_LENGTH
    )


def build_clip_tokenizer(words: Iterable[str] = DEFAULT_WORDS) -> CLIPTokenizer:
    """The tokenizer :func:`write_clip_tokenizer` writes, built in memory."""
    return clip_tokenizer(_train_bpe(_check_words(words)))


def write_clip_tokenizer(folder: Path, words: Iterable[str] = DEFAULT_WORDS) -> None:
    """Write a tiny byte-level BPE CLIP tokenizer to ``folder`` (created if missing).

    Writes ``vocab.json``, ``merges.txt``, ``tokenizer_config.json`` and
    ``special_tokens_map.json``; ``CLIPTokenizer.from_pretrained(folder)`` loads it. The
    vocabulary holds the 256 byte characters, each of them followed by ``</w>``, one token
    ``word</w>`` per word of ``words`` (lowercased; letters only) with the merges that build it,
    and ``<|startoftext|>``, ``<|endoftext|>``. ``model_max_length`` is 77.
    """
    merges = _train_bpe(_check_words(words))
    vocab = clip_vocabulary(merges)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_text = "".join(f"{left} {right}\n" for left, right in merges)
    (folder / "merges.txt").write_text("#version: 0.2\n" + merges_text, encoding="utf-8")
    special = {
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
    }
    config = {**special, "model_max_length": MODEL_MAX_LENGTH, "tokenizer_class": "CLIPTokenizer"}
    for name, content in (("tokenizer_config.json", config), ("special_tokens_map.json", special)):
        (folder / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------------------------


def _text_config(tokenizer: CLIPTokenizer, hidden_size: int, hidden_act: str) -> CLIPTextConfig:
    """A two-layer CLIP text encoder config whose vocabulary and special ids match ``tokenizer``."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MODEL_MAX_LENGTH,
        projection_dim=32,
        hidden_act=hidden_act,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _vae() -> AutoencoderKL:
    """A two-level VAE: it halves the image side, so 32 px images have 16×16×4 latents."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
    )


def _sd_scheduler_config() -> dict[str, object]:
    """The noise schedule shared by SD 1.x, 2.x and XL."""
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "steps_offset": 1,
    }


def _build_sd(kind: Literal["sd-1", "sd-2"], seed: int) -> StableDiffusionPipeline:
    """SD 1.x / 2.x layout: a cross-attention down block, a plain one, a cross-attention mid
    block, then a plain up block and a cross-attention one (6 ``attn2`` layers)."""
    sd2 = kind == "sd-2"
    width = TEXT_DIMS[kind]
    tokenizer = build_clip_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=2,
        norm_num_groups=8,
        cross_attention_dim=width,
        # diffusers reads ``attention_head_dim`` as the number of heads (as SD's configs do).
        attention_head_dim=(4, 8) if sd2 else 8,
        use_linear_projection=sd2,
    )
    torch.manual_seed(seed)
    vae = _vae()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_text_config(tokenizer, width, "gelu" if sd2 else "quick_gelu"))
    scheduler = DDIMScheduler(
        **_sd_scheduler_config(),
        clip_sample=False,
        set_alpha_to_one=False,
        prediction_type="v_prediction" if sd2 else "epsilon",
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _build_sdxl(seed: int) -> StableDiffusionXLPipeline:
    """SDXL layout: a plain down block, a cross-attention one of depth 2, a mid block of depth 2,
    a cross-attention up block of depth 2 and a plain one (12 ``attn2`` layers), conditioned on
    both encoders' features (32 + 32) plus the pooled text and the six size/crop numbers."""
    tokenizer = build_clip_tokenizer()
    time_embed_dim = 8
    pooled_dim = 32
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=2,
        norm_num_groups=8,
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=TEXT_DIMS["sdxl"],
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=6 * time_embed_dim + pooled_dim,
    )
    torch.manual_seed(seed)
    vae = _vae()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_text_config(tokenizer, 32, "quick_gelu"))
    torch.manual_seed(seed)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer, 32, "gelu"))
    scheduler = EulerDiscreteScheduler(
        **_sd_scheduler_config(), timestep_spacing="leading", prediction_type="epsilon"
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=build_clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )


def build_pipeline(kind: PipelineKind, seed: int = 0) -> DiffusionPipeline:
    """A tiny ``kind`` pipeline with random weights, fp32 on ``TEST_DEVICE``, in eval mode.

    ``torch.manual_seed(seed)`` runs before each component is built, so the same ``(kind, seed)``
    always gives the same weights. The pipeline makes ``IMAGE_SIZE`` (32) px images by default.
    """
    if kind in ("sd-1", "sd-2"):
        pipe: DiffusionPipeline = _build_sd(kind, seed)
    elif kind == "sdxl":
        pipe = _build_sdxl(seed)
    else:
        raise ValueError(f"unknown pipeline kind {kind!r}; expected one of {sorted(TEXT_DIMS)}")
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()  # as ``from_pretrained`` leaves them
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(TEST_DEVICE)


def save_pipeline(pipe: DiffusionPipeline, folder: Path) -> Path:
    """Save ``pipe`` to ``folder`` as safetensors; returns ``folder``.

    ``DiffusionPipeline.from_pretrained(folder, local_files_only=True)`` loads it back.
    """
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
