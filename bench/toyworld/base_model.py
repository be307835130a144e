"""The base model: a tiny SD-shaped text-to-image pipeline pretrained on the toy world.

It is a diffusers :class:`~diffusers.StableDiffusionPipeline` that ``perfusion_runtime`` sees as
a ``custom``-family model:

- **tokenizer**: the byte-level BPE CLIP tokenizer of ``tests/tiny_pipelines.py``, with every word
  of the world one token; captions are short, so the context is 16 tokens (a two-object caption
  is 13 with the start and end tokens).
- **text encoder**: a 2-layer CLIP text transformer 64 wide, trained with the UNet (the encodings
  the cross-attention reads then mean something, as CLIP's do for SD).
- **VAE**: an :class:`~diffusers.AutoencoderKL` with two levels (32 px images → 16×16×4 latents),
  trained first on the world's images (:func:`train_autoencoder`, a minute or two). Diffusion at
  16×16 costs a quarter of what it costs on the pixels, which is what buys quality in the time
  budget; flat-coloured shapes are easy to reconstruct, and the latents' scale is measured and
  stored as the VAE's ``scaling_factor``.
- **UNet**: :class:`~diffusers.UNet2DConditionModel`, widths 32/64/128 at 16/8/4 latent pixels,
  transformer blocks with cross-attention (``attn2``) at 8 and 4 pixels and in the middle block
  (7 ``attn2`` layers: one per down block, two per up block, one in the middle); the 16-pixel
  level has none, which halves the cost of a step.
- **scheduler**: DDIM (:data:`SCHEDULE`): SD's β schedule rescaled to zero terminal SNR, with
  v-prediction and "trailing" timesteps, so sampling starts from pure noise as training ends
  there (with SD's schedule, flat backgrounds take their brightness from the starting noise).

Pretraining (:func:`pretrain`) is the standard diffusion loss for v-prediction (plain MSE, as
``pfx train`` computes it), AdamW, captions dropped to "" one time in ten (for classifier-free
guidance), and an EMA of the weights (what is saved), until a step count or a time budget is
reached. One caption in four loses its colour words ("a star on a black background"), so that a
shape's word alone is a caption the model knows — the superclass word of a concept, as "dog" is
for SD — and means a shape of any colour.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from torch import Tensor
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from tests.tiny_pipelines import build_clip_tokenizer

from .instrument import Instrument, Progress, accuracy, to_tensor
from .world import COLOURS, Sample, World

__all__ = [
    "CONTEXT",
    "AutoencoderSettings",
    "BaseSettings",
    "build_pipeline",
    "generate",
    "pretrain",
    "quality_gate",
    "train_autoencoder",
    "without_colours",
]

#: Tokens per prompt (start and end tokens included).
CONTEXT = 16
#: SD's noise schedule, rescaled to zero terminal SNR, with v-prediction and sampling from the
#: last timestep ("trailing"): Lin et al., "Common Diffusion Noise Schedules and Sample Steps are
#: Flawed" (2023). The first sampling step then sees no trace of an image, so the background's
#: brightness follows the prompt and not the starting noise.
SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "rescale_betas_zero_snr": True,
    "prediction_type": "v_prediction",
    "timestep_spacing": "trailing",
    "steps_offset": 1,  # unused with "trailing"; the pipeline warns about any other value
    "clip_sample": False,
    "set_alpha_to_one": False,
}


@dataclass(frozen=True)
class AutoencoderSettings:
    """How the VAE is trained."""

    steps: int = 400
    batch: int = 32
    lr: float = 2e-3
    kl_weight: float = 1e-6
    widths: tuple[int, ...] = (16, 32)
    latent_channels: int = 4
    seed: int = 0


@dataclass(frozen=True)
class BaseSettings:
    """The text encoder's and UNet's sizes and how they are pretrained: until ``max_steps``
    steps or ``minutes`` of training, whichever comes first (``None``: no such limit)."""

    minutes: float | None = 28.0
    max_steps: int | None = 4500
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 100
    caption_dropout: float = 0.1
    colour_dropout: float = 0.25
    ema_decay: float = 0.999
    text_width: int = 64
    text_layers: int = 2
    unet_widths: tuple[int, ...] = (32, 64, 128)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.minutes is None and self.max_steps is None:
            raise ValueError("pretraining needs a step count, a time budget, or both")


def _autoencoder(size: int, settings: AutoencoderSettings) -> AutoencoderKL:
    levels = len(settings.widths)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=settings.widths,
        layers_per_block=1,
        latent_channels=settings.latent_channels,
        norm_num_groups=8,
        sample_size=size,
        mid_block_add_attention=False,
    )


def train_autoencoder(
    images: np.ndarray, settings: AutoencoderSettings, progress: Progress | None = None
) -> AutoencoderKL:
    """A VAE trained on uint8 ``images`` [n, s, s, 3] (reconstruction MSE of a posterior sample
    plus ``kl_weight`` × KL), its ``scaling_factor`` set to 1 / the std of the latent means."""
    torch.manual_seed(settings.seed)
    vae = _autoencoder(images.shape[1], settings)
    pixels = to_tensor(images)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.lr)
    generator = torch.Generator().manual_seed(settings.seed)
    vae.train()
    for step in range(settings.steps):
        x = pixels[torch.randint(len(pixels), (settings.batch,), generator=generator)]
        posterior = vae.encode(x).latent_dist
        reconstruction = vae.decode(posterior.sample(generator)).sample
        loss = F.mse_loss(reconstruction, x) + settings.kl_weight * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if progress is not None:
            progress(step + 1, settings.steps, f"loss {loss.item():.4f}")
    vae.eval()
    latents = _encode(vae, pixels[: 4 * settings.batch], scale=1.0)
    vae.register_to_config(scaling_factor=float(1 / latents.std()))
    return vae


@torch.no_grad()
def _encode(vae: AutoencoderKL, pixels: Tensor, scale: float, chunk: int = 256) -> Tensor:
    """Latent means × ``scale`` of ``pixels`` [n, 3, s, s] in [-1, 1]."""
    parts = [
        vae.encode(pixels[i : i + chunk]).latent_dist.mean for i in range(0, len(pixels), chunk)
    ]
    return torch.cat(parts) * scale


def _text_encoder(tokenizer: CLIPTokenizer, settings: BaseSettings) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.text_width,
        intermediate_size=2 * settings.text_width,
        num_hidden_layers=settings.text_layers,
        num_attention_heads=4,
        max_position_embeddings=CONTEXT,
        projection_dim=settings.text_width,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def _unet(world: World, vae: AutoencoderKL, settings: BaseSettings) -> UNet2DConditionModel:
    deeper = len(settings.unet_widths) - 1
    return UNet2DConditionModel(
        sample_size=world.size // 2,
        in_channels=vae.config.latent_channels,
        out_channels=vae.config.latent_channels,
        down_block_types=("DownBlock2D", *("CrossAttnDownBlock2D",) * deeper),
        up_block_types=(*("CrossAttnUpBlock2D",) * deeper, "UpBlock2D"),
        block_out_channels=settings.unet_widths,
        layers_per_block=1,
        norm_num_groups=16,
        cross_attention_dim=settings.text_width,
        # diffusers reads ``attention_head_dim`` as the number of heads (as SD's configs do).
        attention_head_dim=4,
    )


def build_pipeline(
    world: World, vae: AutoencoderKL, settings: BaseSettings
) -> StableDiffusionPipeline:
    """The base pipeline with ``vae`` and a fresh (seeded, random) text encoder and UNet."""
    tokenizer = build_clip_tokenizer(world.vocabulary())
    tokenizer.model_max_length = CONTEXT
    torch.manual_seed(settings.seed)
    text_encoder = _text_encoder(tokenizer, settings)
    torch.manual_seed(settings.seed)
    unet = _unet(world, vae, settings)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(**SCHEDULE),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def without_colours(caption: str) -> str:
    """``caption`` without its colour words: "an orange ring and a blue star on a gray
    background" → "a ring and a star on a gray background"."""
    return re.sub(rf"\ban? ({'|'.join(COLOURS)}) ", "a ", caption)


def _token_ids(tokenizer: CLIPTokenizer, captions: list[str]) -> Tensor:
    """Token ids [n, CONTEXT] exactly as the pipeline's ``encode_prompt`` makes them."""
    return tokenizer(
        captions, padding="max_length", max_length=CONTEXT, truncation=True, return_tensors="pt"
    ).input_ids


class _Average:
    """An exponential moving average of some parameters, its decay ramped up over the first
    steps (min(decay, (1 + t) / (10 + t)))."""

    def __init__(self, parameters: list[torch.nn.Parameter], decay: float) -> None:
        self.parameters = parameters
        self.average = [p.detach().clone() for p in parameters]
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for average, parameter in zip(self.average, self.parameters, strict=True):
            average.lerp_(parameter, 1 - decay)
        self.updates += 1

    @torch.no_grad()
    def copy_to_parameters(self) -> None:
        for average, parameter in zip(self.average, self.parameters, strict=True):
            parameter.copy_(average)


def pretrain(
    pipe: StableDiffusionPipeline,
    samples: list[Sample],
    settings: BaseSettings,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train ``pipe``'s text encoder and UNet on ``samples`` (its VAE stays fixed) and leave
    the EMA weights in it. Returns steps, seconds and the mean loss of the last 100 steps."""
    pixels = to_tensor(np.concatenate([s.images for s in samples]))
    latents = _encode(pipe.vae, pixels, scale=pipe.vae.config.scaling_factor)
    captions = [c for s in samples for c in s.captions]
    ids = _token_ids(pipe.tokenizer, captions)
    colourless = _token_ids(pipe.tokenizer, [without_colours(c) for c in captions])
    empty = _token_ids(pipe.tokenizer, [""])
    modules = (pipe.text_encoder, pipe.unet)
    parameters = [p for module in modules for p in module.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=0.01)
    average = _Average(parameters, settings.ema_decay)
    alphas = torch.as_tensor(pipe.scheduler.alphas_cumprod, dtype=torch.float32)
    generator = torch.Generator().manual_seed(settings.seed)
    for module in modules:
        module.train()
    budget = math.inf if settings.minutes is None else 60 * settings.minutes
    started = time.perf_counter()
    losses: list[float] = []
    while (settings.max_steps is None or len(losses) < settings.max_steps) and (
        time.perf_counter() - started < budget
    ):
        index = torch.randint(len(latents), (settings.batch,), generator=generator)
        dropped = torch.rand(settings.batch, generator=generator) < settings.caption_dropout
        plain = torch.rand(settings.batch, generator=generator) < settings.colour_dropout
        tokens = torch.where(plain[:, None], colourless[index], ids[index])
        tokens = torch.where(dropped[:, None], empty, tokens)
        noise = torch.randn(latents[index].shape, generator=generator)
        t = torch.randint(len(alphas), (settings.batch,), generator=generator)
        alpha = alphas[t].view(-1, 1, 1, 1)
        noisy = alpha.sqrt() * latents[index] + (1 - alpha).sqrt() * noise
        velocity = alpha.sqrt() * noise - (1 - alpha).sqrt() * latents[index]
        prediction = pipe.unet(noisy, t, pipe.text_encoder(tokens)[0]).sample
        loss = F.mse_loss(prediction, velocity)
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * min(1.0, (len(losses) + 1) / settings.warmup)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        average.update()
        losses.append(loss.item())
        if progress is not None:
            status = f"step {len(losses)} loss {np.mean(losses[-50:]):.4f}"
            if settings.max_steps is not None:
                progress(len(losses), settings.max_steps, status)
            else:  # a time budget: progress in seconds
                progress(int(time.perf_counter() - started), int(budget), status)
    average.copy_to_parameters()
    for module in modules:
        module.eval()
    return {
        "steps": len(losses),
        "seconds": round(time.perf_counter() - started, 1),
        "final_loss": float(np.mean(losses[-100:])) if losses else None,
    }


@torch.no_grad()
def generate(
    pipe: Any,
    prompts: list[str],
    *,
    steps: int = 30,
    guidance: float = 4.0,
    seed: int = 0,
    batch: int = 64,
) -> np.ndarray:
    """uint8 images [n, s, s, 3] for ``prompts`` (DDIM, classifier-free guidance), the
    n-th drawn from noise seeded with (seed, n) — the same prompt list gives the same images."""
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    images = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        generators = [
            torch.Generator().manual_seed(seed * 1_000_003 + start + n) for n in range(len(chunk))
        ]
        out = pipe(
            chunk,
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=size,
            width=size,
            generator=generators,
            output_type="np",
        ).images
        images.append(np.rint(np.clip(out, 0, 1) * 255).astype(np.uint8))
    return np.concatenate(images)


def quality_gate(
    pipe: Any,
    instrument: Instrument,
    sample: Sample,
    *,
    steps: int = 30,
    guidance: float = 4.0,
    seed: int = 0,
) -> tuple[dict[str, float], np.ndarray]:
    """Generate an image for each caption of ``sample``; returns, per attribute, how often the
    instrument reads the attribute the caption asked for (over every object), and the images."""
    images = generate(pipe, list(sample.captions), steps=steps, guidance=guidance, seed=seed)
    return accuracy(instrument, replace(sample, images=images)), images
