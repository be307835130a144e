"""The toy world: small RGB images of flat-coloured shapes on plain backgrounds, with captions.

Every image holds one object ("a red circle on a black background") or two, one in the left half
and one in the right ("a red circle and a blue square on a black background", left object
first). An object is a *triple* (shape, colour, background); the world holds some triples out
entirely — one background for one (shape, colour) pair in every ``held_out_every`` — so that a
model trained on the ``train`` split meets the ``held_out`` triples only as new combinations of
words it knows.

Drawing is numpy alone: each object is rasterised at ``SUPERSAMPLE``× the image side and
averaged down (anti-aliased edges), with jitter in position, size and colour. Image ``i`` of a
split is drawn from a generator seeded with (world seed, split, object count, i) alone, so the
same world gives the same bytes, and the first n images of a longer sample are the n images of a
shorter one.

:data:`NOVEL_OBJECTS` are the concepts of stage 4: a world shape (their superclass word) painted
with a pattern the world never draws, e.g. a striped star. Only :func:`draw_novel` draws them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "NOVEL_OBJECTS",
    "SHAPES",
    "SUPERSAMPLE",
    "Attribute",
    "Novel",
    "Sample",
    "Split",
    "World",
    "article",
    "draw_novel",
    "halves",
    "load_sample",
    "save_grid",
    "save_sample",
]

RGB = tuple[int, int, int]
Split = Literal["train", "held_out"]
Attribute = Literal["shape", "colour", "background"]
Pattern = Literal["stripes", "checks", "dots"]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "star")
COLOURS: dict[str, RGB] = {
    "red": (220, 35, 35),
    "orange": (250, 140, 20),
    "yellow": (240, 225, 40),
    "green": (35, 170, 60),
    "blue": (40, 80, 235),
    "purple": (150, 55, 205),
}
BACKGROUNDS: dict[str, RGB] = {
    "black": (12, 12, 12),
    "gray": (125, 125, 125),
    "white": (245, 245, 245),
}
#: Sub-pixels per pixel side when rasterising (anti-aliasing).
SUPERSAMPLE = 4
#: Per-channel jitter (±) of an object's and a background's colour.
COLOUR_JITTER = 12
BACKGROUND_JITTER = 8
#: An object's radius as a fraction of its region's width: the whole image for one object,
#: a half for two (the radius of a shape's circumscribed circle; squares and crosses are a bit
#: smaller so that every shape covers a similar area).
RADIUS_RANGE = {1: (0.22, 0.36), 2: (0.28, 0.4)}


@dataclass(frozen=True)
class Novel:
    """An object the world never draws: a world ``shape`` (the concept's superclass word) filled
    with a two-colour ``pattern``."""

    name: str
    shape: str
    pattern: Pattern
    colours: tuple[RGB, RGB]


#: The concepts of stage 4, each a pattern on a shape the base model knows.
NOVEL_OBJECTS: dict[str, Novel] = {
    "stripy": Novel("stripy", "star", "stripes", ((250, 200, 30), (120, 40, 190))),
    "checky": Novel("checky", "square", "checks", ((235, 40, 40), (245, 245, 245))),
}


@dataclass(frozen=True)
class Sample:
    """Images [n, size, size, 3] uint8, their captions, and labels [n, objects, 3]: per object
    (left to right) the indices of its shape, colour and background in the world's lists."""

    images: np.ndarray
    captions: tuple[str, ...]
    labels: np.ndarray

    @property
    def objects(self) -> int:
        """Objects per image (1 or 2)."""
        return int(self.labels.shape[1])

    def head(self, count: int) -> Sample:
        """The first ``count`` images, captions and labels."""
        return Sample(self.images[:count], self.captions[:count], self.labels[:count])


@dataclass(frozen=True)
class World:
    """The vocabulary, palette, image size, held-out triples and seed of a world."""

    size: int = 32
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[tuple[str, RGB], ...] = tuple(COLOURS.items())
    backgrounds: tuple[tuple[str, RGB], ...] = tuple(BACKGROUNDS.items())
    held_out_every: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.size < 16 or self.size % 4:
            raise ValueError(f"size must be a multiple of 4, at least 16; got {self.size}")
        if self.held_out_every < 2:
            raise ValueError("held_out_every must be ≥ 2 (every pair must keep a training triple)")

    def names(self, attribute: Attribute) -> tuple[str, ...]:
        """The words of ``attribute``, in label order."""
        if attribute == "shape":
            return self.shapes
        return tuple(name for name, _ in getattr(self, f"{attribute}s"))

    def settings(self) -> dict[str, object]:
        """Everything that defines the world, as JSON-ready values."""
        return {
            "size": self.size,
            "shapes": list(self.shapes),
            "colours": {name: list(rgb) for name, rgb in self.colours},
            "backgrounds": {name: list(rgb) for name, rgb in self.backgrounds},
            "held_out_every": self.held_out_every,
            "seed": self.seed,
        }

    def vocabulary(self) -> list[str]:
        """Every word a caption of this world (or of a novel object's superclass) can hold."""
        words = ["a", "an", "and", "on", "background", *self.shapes]
        words += [*self.names("colour"), *self.names("background")]
        return list(dict.fromkeys(words))

    @cached_property
    def held_out(self) -> frozenset[tuple[int, int, int]]:
        """The held-out triples (shape, colour, background): the (shape, colour) pairs in a
        seeded order, one in every ``held_out_every`` losing one background (taken in turn)."""
        pairs = [(s, c) for s in range(len(self.shapes)) for c in range(len(self.colours))]
        order = np.random.default_rng([self.seed, 7]).permutation(len(pairs))
        backgrounds = len(self.backgrounds)
        return frozenset(
            (*pairs[index], (rank // self.held_out_every) % backgrounds)
            for rank, index in enumerate(order)
            if rank % self.held_out_every == 0
        )

    def triples(self, split: Split) -> list[tuple[int, int, int]]:
        """The split's (shape, colour, background) triples, sorted."""
        every = (
            (s, c, b)
            for s in range(len(self.shapes))
            for c in range(len(self.colours))
            for b in range(len(self.backgrounds))
        )
        return [t for t in every if (t in self.held_out) == (split == "held_out")]

    def caption(self, objects: Sequence[tuple[int, int]], background: int) -> str:
        """The caption of ``objects`` = [(shape, colour), …] left to right on ``background``:
        "a red circle on a black background", "an orange ring and a blue star on a …"."""
        colours = self.names("colour")
        things = " and ".join(
            f"{article(colours[c])} {colours[c]} {self.shapes[s]}" for s, c in objects
        )
        return f"{things} on a {self.names('background')[background]} background"

    def sample(self, split: Split, count: int, objects: Literal[1, 2] = 1) -> Sample:
        """``count`` images of the split with one or two objects each.

        Train images hold train triples only. A held-out image with two objects has a held-out
        triple on the left and any triple with the same background on the right.
        """
        firsts = self.triples(split)
        seconds = firsts if split == "train" else self.triples("train") + firsts
        images = np.empty((count, self.size, self.size, 3), np.uint8)
        labels = np.empty((count, objects, 3), np.int64)
        captions = []
        for index in range(count):
            rng = np.random.default_rng([self.seed, split == "held_out", objects, index])
            chosen = [firsts[rng.integers(len(firsts))]]
            if objects == 2:
                same = [t for t in seconds if t[2] == chosen[0][2]]
                chosen.append(same[rng.integers(len(same))])
            background = chosen[0][2]
            labels[index] = chosen
            things = [(self.shapes[s], self.colours[c][1]) for s, c, _ in chosen]
            images[index] = self.draw(rng, things, background)
            captions.append(self.caption([(s, c) for s, c, _ in chosen], background))
        return Sample(images, tuple(captions), labels)

    def draw(
        self, rng: np.random.Generator, things: Sequence[tuple[str, RGB | Novel]], background: int
    ) -> np.ndarray:
        """One image [size, size, 3] uint8 of ``things`` — (shape, flat colour or novel object)
        — left to right on the background ``background``, jittered by ``rng``."""
        base = np.asarray(self.backgrounds[background][1], np.float64)
        base = base + rng.uniform(-BACKGROUND_JITTER, BACKGROUND_JITTER, 3)
        image = np.broadcast_to(np.clip(base, 0, 255), (self.size, self.size, 3)).copy()
        width = self.size / len(things)
        low, high = RADIUS_RANGE[len(things)]
        for slot, (shape, paint) in enumerate(things):
            radius = rng.uniform(low, high) * width
            margin = radius + 0.5
            cx = rng.uniform(slot * width + margin, (slot + 1) * width - margin)
            cy = rng.uniform(margin, self.size - margin)
            _paint_object(image, shape, paint, (cx, cy), radius, rng)
        return np.rint(image).astype(np.uint8)


def article(word: str) -> str:
    """ "an" before a vowel, else "a"."""
    return "an" if word[0] in "aeiou" else "a"


def _polygon(x: np.ndarray, y: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test of the points (x, y) against ``vertices`` [k, 2]."""
    inside = np.zeros(x.shape, bool)
    for (x0, y0), (x1, y1) in zip(vertices, np.roll(vertices, -1, axis=0), strict=True):
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < at)
    return inside


def _regular(points: int, radii: Sequence[float]) -> np.ndarray:
    """Vertices of a shape pointing up: ``points`` × len(radii) corners, radii taken in turn."""
    count = points * len(radii)
    angles = np.pi / 2 + 2 * np.pi * np.arange(count) / count
    radius = np.resize(np.asarray(radii), count)
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


_TRIANGLE = _regular(3, [1.0])
_STAR = _regular(5, [1.0, 0.45])


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Which points (u, v) lie inside ``shape`` of circumradius 1 centred at 0 (v points up)."""
    if shape == "circle":
        return u**2 + v**2 <= 1
    if shape == "ring":
        return (u**2 + v**2 <= 1) & (u**2 + v**2 >= 0.55**2)
    if shape == "square":
        return np.maximum(abs(u), abs(v)) <= 0.8
    if shape == "cross":
        return ((abs(u) <= 0.32) & (abs(v) <= 0.95)) | ((abs(v) <= 0.32) & (abs(u) <= 0.95))
    if shape == "triangle":
        return _polygon(u, v + 0.15, _TRIANGLE)  # lowered so that it fills its circle evenly
    if shape == "star":
        return _polygon(u, v, _STAR)
    raise ValueError(f"unknown shape {shape!r}")


def _pattern(pattern: Pattern, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Which points (u, v) take a novel object's first colour."""
    if pattern == "stripes":
        return np.floor((u + v) * 2.5) % 2 == 0
    if pattern == "checks":
        return (np.floor(u * 2.5) + np.floor(v * 2.5)) % 2 == 0
    return (u * 2.5 - np.round(u * 2.5)) ** 2 + (v * 2.5 - np.round(v * 2.5)) ** 2 <= 0.3**2


def _paint_object(
    image: np.ndarray,
    shape: str,
    paint: RGB | Novel,
    centre: tuple[float, float],
    radius: float,
    rng: np.random.Generator,
) -> None:
    """Paint one object into ``image`` (float, [H, W, 3]) in place, anti-aliased."""
    cx, cy = centre
    top, left = max(0, math.floor(cy - radius - 1)), max(0, math.floor(cx - radius - 1))
    bottom = min(image.shape[0], math.ceil(cy + radius + 1))
    right = min(image.shape[1], math.ceil(cx + radius + 1))
    sub = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    ys = (np.arange(top, bottom)[:, None] + sub[None]).reshape(-1)
    xs = (np.arange(left, right)[:, None] + sub[None]).reshape(-1)
    u, v = (xs[None, :] - cx) / radius, (cy - ys[:, None]) / radius
    u, v = np.broadcast_arrays(u, v)
    inside = shape_mask(shape, u, v)[..., None]
    if isinstance(paint, Novel):
        first = _pattern(paint.pattern, u, v)[..., None]
        colour = np.where(
            first, np.asarray(paint.colours[0], float), np.asarray(paint.colours[1], float)
        )
    else:
        colour = np.asarray(paint, float) + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, 3)
        colour = np.broadcast_to(np.clip(colour, 0, 255), (*u.shape, 3))
    region = image[top:bottom, left:right]
    sharp = np.repeat(np.repeat(region, SUPERSAMPLE, 0), SUPERSAMPLE, 1)
    sharp = np.where(inside, colour, sharp)
    height, width = bottom - top, right - left
    region[...] = sharp.reshape(height, SUPERSAMPLE, width, SUPERSAMPLE, 3).mean(axis=(1, 3))


def draw_novel(
    world: World, novel: Novel, count: int, background: str = "black", seed: int = 0
) -> np.ndarray:
    """``count`` images [count, size, size, 3] uint8 of ``novel`` alone on ``background``, with
    the world's position and size jitter (the training images of a concept)."""
    index = world.names("background").index(background)
    images = np.empty((count, world.size, world.size, 3), np.uint8)
    for n in range(count):
        rng = np.random.default_rng([world.seed, 101, seed, n])
        images[n] = world.draw(rng, [(novel.shape, novel)], index)
    return images


def halves(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The left and right halves of two-object images [n, s, s, 3], each centred in a full-size
    image filled with the median colour of the half's outer frame (its background) — what the
    instrument reads for each object."""
    size = images.shape[2]
    quarter = size // 4
    pieces = []
    for half in (images[:, :, : size // 2], images[:, :, size // 2 :]):
        frame = np.concatenate([half[:, 0], half[:, -1], half[:, :, 0], half[:, :, -1]], axis=1)
        piece = np.empty_like(images)
        piece[...] = np.median(frame, axis=1)[:, None, None]
        piece[:, :, quarter : quarter + size // 2] = half
        pieces.append(piece)
    return pieces[0], pieces[1]


def save_sample(path: Path, sample: Sample) -> None:
    """Write ``sample`` to ``path`` (.npz, compressed; captions as a unicode array)."""
    captions = np.asarray(sample.captions, dtype=str)
    np.savez_compressed(path, images=sample.images, labels=sample.labels, captions=captions)


def load_sample(path: Path) -> Sample:
    """The sample :func:`save_sample` wrote (read without unpickling)."""
    with np.load(path, allow_pickle=False) as data:
        return Sample(data["images"], tuple(str(c) for c in data["captions"]), data["labels"])


def save_grid(path: Path, images: np.ndarray, columns: int = 16, scale: int = 2) -> None:
    """Write uint8 ``images`` [n, s, s, 3] to ``path`` as one PNG, ``columns`` a row, each image
    enlarged ``scale`` times (nearest neighbour); a short last row is filled with black."""
    rows = -(-len(images) // columns)
    padded = np.zeros((rows * columns, *images.shape[1:]), np.uint8)
    padded[: len(images)] = images
    size = images.shape[1]
    grid = padded.reshape(rows, columns, size, size, 3).transpose(0, 2, 1, 3, 4)
    grid = grid.reshape(rows * size, columns * size, 3).repeat(scale, 0).repeat(scale, 1)
    Image.fromarray(grid).save(path)
