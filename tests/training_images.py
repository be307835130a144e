"""Pictures to train on, drawn here: a brown blob on a pale background, and masks for them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["draw_images", "draw_masks"]


def draw_images(folder: Path, count: int = 3, size: tuple[int, int] = (32, 32)) -> Path:
    """Write ``count`` PNGs ``teddy0.png``, … of ``size`` to ``folder``, the blob in a different
    place in each; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        image = Image.new("RGB", size, (200, 220, 255))
        x, y = (int(v) for v in rng.integers(2, 10, 2))
        ImageDraw.Draw(image).ellipse([x, y, x + 18, y + 20], fill=(150, 90, 40))
        image.save(folder / f"teddy{index}.png")
    return folder


def draw_masks(folder: Path, images: Path, box: tuple[int, int, int, int] | None = None) -> Path:
    """Write a grayscale mask per PNG of ``images`` to ``folder``, same name and size: white
    inside ``box`` and black elsewhere, or all white without a box; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(images.glob("*.png")):
        with Image.open(path) as image:
            mask = Image.new("L", image.size, 0 if box else 255)
        if box:
            ImageDraw.Draw(mask).rectangle(box, fill=255)
        mask.save(folder / path.name)
    return folder
