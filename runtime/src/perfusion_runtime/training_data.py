"""Training images and masks: read and checked once, then encoded to latents once.

Images come from one folder (PNG, JPEG, WebP by suffix, any case; other files and hidden files are
ignored), sorted by name. Each is read with its EXIF orientation applied, converted to RGB,
centre-cropped to a square and resized to the training resolution (Lanczos). An image whose
shorter side is under ``resolution / MAX_UPSCALE`` is refused: upscaled more than four times, it
teaches mostly blur. Masks (optional) come from another folder, one per image with the same file
stem and the same size, grayscale (white: the subject); each is cropped like its image and
averaged down to the latent size, and weights the loss there.

The VAE encodes every image and its mirror image once (the latent distribution's mean, shifted
and scaled as the pipeline's VAE config says); random horizontal flips pick between the two.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from .errors import PerfusionRuntimeError, RuntimeErrorCode

__all__ = ["IMAGE_SUFFIXES", "MAX_UPSCALE", "LatentImages", "TrainingImages", "read_images"]

#: Files of the image and mask folders that are read (by suffix, any case).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
#: An image's shorter side must be at least ``resolution / MAX_UPSCALE`` pixels.
MAX_UPSCALE = 4


@dataclass(frozen=True)
class LatentImages:
    """Latents [n, 2, c, h, w] and loss weights [n, 2, 1, h, w] of the images (index 0 of the
    second axis) and their mirror images (index 1), on the training device."""

    latents: Tensor
    weights: Tensor


@dataclass(frozen=True)
class TrainingImages:
    """The checked images as pixels [n, 3, r, r] in [0, 1], their masks [n, 1, h, w] in [0, 1]
    at the latent size (or None), the file names and a SHA-256 over names and bytes."""

    names: tuple[str, ...]
    pixels: Tensor
    masks: Tensor | None
    digest: str

    @torch.no_grad()
    def encode(self, pipe: Any, chunk: int) -> LatentImages:
        """Encode the images and their mirror images with ``pipe``'s VAE, ``chunk`` at a time."""
        vae = pipe.vae
        device = pipe._execution_device
        both = torch.stack([self.pixels, self.pixels.flip(-1)], 1).flatten(0, 1) * 2 - 1
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        latents = torch.cat(
            [
                (vae.encode(part.to(device, vae.dtype)).latent_dist.mean.float() - shift)
                * vae.config.scaling_factor
                for part in both.split(chunk)
            ]
        ).unflatten(0, (len(self.names), 2))
        side = latents.shape[-1]
        masks = self.masks if self.masks is not None else torch.ones(len(self.names), 1, side, side)
        return LatentImages(latents, torch.stack([masks, masks.flip(-1)], 1).to(device))


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        path
        for path in folder.iterdir()
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and path.name[0] != "."
    )


def _open(path: Path, mode: str, digest: Any) -> Image.Image:
    """The image at ``path`` in ``mode``, EXIF orientation applied; its name and bytes go to
    ``digest``."""
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            result = ImageOps.exif_transpose(image).convert(mode)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise PerfusionRuntimeError(
            RuntimeErrorCode.INVALID_IMAGE, f"{path.name}: not a readable image ({error})"
        ) from error
    digest.update(path.name.encode() + b"\0" + hashlib.sha256(data).digest())
    return result


def _square(image: Image.Image, side: int, resample: Image.Resampling) -> Tensor:
    """The centre square of ``image`` resized to ``side``, as [channels, side, side] in [0, 1]."""
    fitted = np.asarray(ImageOps.fit(image, (side, side), resample), dtype=np.float32) / 255
    return torch.from_numpy(fitted[..., None] if fitted.ndim == 2 else fitted).permute(2, 0, 1)


def _mask_files(folder: Path, files: list[Path]) -> list[Path]:
    """The mask of each image, matched by file stem (MASK_MISMATCH unless one to one)."""
    if not folder.is_dir():
        raise PerfusionRuntimeError(RuntimeErrorCode.MASK_MISMATCH, f"{folder}: no such folder")
    by_stem = {path.stem: path for path in _image_files(folder)}
    stems = [path.stem for path in files]
    problems = (
        ("several images share the stem", sorted({s for s in stems if stems.count(s) > 1})),
        ("no mask for", [stem for stem in stems if stem not in by_stem]),
        ("no image for the mask", sorted(set(by_stem) - set(stems))),
    )
    for problem, names in problems:
        if names:
            shown = ", ".join(names[:3]) + (" …" if len(names) > 3 else "")
            raise PerfusionRuntimeError(
                RuntimeErrorCode.MASK_MISMATCH, f"{folder}: {problem} {shown}"
            )
    return [by_stem[stem] for stem in stems]


def read_images(
    images: str | os.PathLike[str],
    masks: str | os.PathLike[str] | None,
    resolution: int,
    latent_side: int,
) -> TrainingImages:
    """Read and check the images in the folder ``images`` (and the masks in ``masks``).

    NO_IMAGES: the folder is missing or holds no image. INVALID_IMAGE: a file cannot be read, or
    an image is too small for ``resolution``. MASK_MISMATCH: masks and images do not match one to
    one by stem, a mask's size differs from its image's, or a mask is black at the latent size.
    """
    folder = Path(images)
    if not folder.is_dir():
        raise PerfusionRuntimeError(RuntimeErrorCode.NO_IMAGES, f"{folder}: no such folder")
    files = _image_files(folder)
    if not files:
        raise PerfusionRuntimeError(
            RuntimeErrorCode.NO_IMAGES, f"{folder}: no PNG, JPEG or WebP image in it"
        )
    mask_files = None if masks is None else _mask_files(Path(masks), files)
    smallest = math.ceil(resolution / MAX_UPSCALE)
    digest = hashlib.sha256()
    pixels, weights = [], []
    for index, path in enumerate(files):
        image = _open(path, "RGB", digest)
        if min(image.size) < smallest:
            raise PerfusionRuntimeError(
                RuntimeErrorCode.INVALID_IMAGE,
                f"{path.name} is {image.width}×{image.height}; training at {resolution} px needs "
                f"a shorter side of at least {smallest} px",
            )
        pixels.append(_square(image, resolution, Image.Resampling.LANCZOS))
        if mask_files is None:
            continue
        mask = _open(mask_files[index], "F", digest)
        name = mask_files[index].name
        if mask.size != image.size:
            raise PerfusionRuntimeError(
                RuntimeErrorCode.MASK_MISMATCH,
                f"{name} is {mask.width}×{mask.height}, its image {path.name} "
                f"{image.width}×{image.height}",
            )
        weights.append(_square(mask, latent_side, Image.Resampling.BOX))
        if not weights[-1].max() > 0:
            raise PerfusionRuntimeError(
                RuntimeErrorCode.MASK_MISMATCH, f"{name} is black: nothing to learn"
            )
    return TrainingImages(
        tuple(path.name for path in files),
        torch.stack(pixels),
        torch.stack(weights) if weights else None,
        digest.hexdigest(),
    )
