"""Card-sized thumbnails of preview images (Pillow), so a page of results does not load
full-size images. A preview was checked to be PNG, JPEG or WebP by its first bytes only; one that
Pillow cannot decode, or that claims more pixels than :data:`MAX_PIXELS`, has no thumbnail."""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

__all__ = ["MAX_PIXELS", "THUMBNAIL_WIDTH", "make_thumbnail"]

#: Width of a card's image, in pixels (twice the CSS width, for high-density screens).
THUMBNAIL_WIDTH = 320
#: Largest image decoded (a 1 MB file can claim far more pixels than it holds).
MAX_PIXELS = 40_000_000


def make_thumbnail(data: bytes, width: int = THUMBNAIL_WIDTH) -> bytes | None:
    """A WebP at most ``width`` pixels wide (aspect kept, never enlarged), or None when the
    image cannot be decoded."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_PIXELS:
                return None
            image.draft("RGB", (width, width))  # JPEG: decode at a reduced scale
            image.thumbnail((width, 4 * width))
            converted = image.convert("RGBA" if "A" in image.getbands() else "RGB")
            output = io.BytesIO()
            converted.save(output, format="WEBP", quality=80, method=4)
            return output.getvalue()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None
