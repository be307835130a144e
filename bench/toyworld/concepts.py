"""Stage 4: concepts the base model has never seen, trained with ``pfx train`` as a user would.

Each novel object (:data:`toyworld.world.NOVEL_OBJECTS`, e.g. a striped star) gets a handful of
training images — :func:`~toyworld.world.draw_novel` drawings on a black background, written as
PNG files — and is trained twice by the ``pfx`` command line, in a subprocess:

- ``locked``: the paper's method (keys locked to the superclass word, ``--lock-keys``);
- ``learned_keys``: the paper's ablation, one key target per layer learned too (``--learn-keys``).

The settings are the paper's (400 steps of 4 × 4 images, learning rates 0.03 and 0.006, training
gate β = 0.75, τ = 0.1) on the model's own 32-pixel images, with one world-style template
("a {} on a black background": the world's captions are its only language) and no flips (a
pattern has a handedness). The gate direction's covariance is estimated over the world's training
captions (``--captions``), as a user estimates it over captions of the model's domain.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .world import Novel, World, draw_novel

__all__ = ["TEMPLATE", "VARIANTS", "ConceptSettings", "concept_file", "token", "train_concept"]

#: The one training template; ``{}`` is the token (or the superclass word).
TEMPLATE = "a {} on a black background"
#: The trained variants: name → the ``pfx train`` flag that makes it.
VARIANTS: dict[str, str] = {"locked": "--lock-keys", "learned_keys": "--learn-keys"}


@dataclass(frozen=True)
class ConceptSettings:
    """How each concept is trained (``pfx train`` options; the paper's defaults)."""

    images: int = 6
    steps: int = 400
    batch: int = 4
    accumulate: int = 4
    lr_values: float = 0.03
    lr_embedding: float = 0.006
    seed: int = 0
    in_process: bool = False
    """Run ``pfx train`` in this process (``pfx.cli.main``) rather than as a subprocess: the
    same command, without the seconds of importing torch again (the tests' miniature)."""


def token(novel: Novel) -> str:
    """The concept's trigger token, e.g. ``<stripy>``."""
    return f"<{novel.name}>"


def concept_file(folder: Path, novel: Novel, variant: str) -> Path:
    """Where stage 4 writes the concept of ``novel`` trained as ``variant``."""
    return folder / f"{novel.name}.{variant}.perfusion.safetensors"


def write_training_images(world: World, novel: Novel, count: int, folder: Path) -> np.ndarray:
    """Draw ``count`` training images of ``novel`` into ``folder`` as PNGs; returns them."""
    images = draw_novel(world, novel, count)
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{index:02d}.png")
    return images


def _pfx() -> str:
    """The ``pfx`` command of the interpreter running this (the project's virtual environment)."""
    beside = Path(sys.executable).with_name("pfx")
    return str(beside) if beside.is_file() else "pfx"


def train_concept(
    model: Path,
    images: Path,
    captions: Path,
    novel: Novel,
    variant: str,
    out: Path,
    settings: ConceptSettings,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run ``pfx train … --json`` for ``novel`` as ``variant``; returns its JSON report.
    Raises RuntimeError with the command's error line when it fails."""
    command = [
        _pfx(),
        "train",
        "--model",
        str(model),
        "--images",
        str(images),
        "--token",
        token(novel),
        "--superclass",
        novel.shape,
        "--out",
        str(out),
        "--captions",
        str(captions),
        "--template",
        TEMPLATE,
        "--no-flip",
        VARIANTS[variant],
        "--steps",
        str(settings.steps),
        "--batch",
        str(settings.batch),
        "--accumulate",
        str(settings.accumulate),
        "--lr-values",
        str(settings.lr_values),
        "--lr-embedding",
        str(settings.lr_embedding),
        "--seed",
        str(settings.seed),
        "--device",
        "cpu",
        "--name",
        f"{novel.name} ({variant})",
        "--json",
    ]
    if settings.in_process:
        from pfx.cli import main

        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = main(command[1:])
        if code != 0:
            raise RuntimeError(f"pfx train failed ({code}): {printed.getvalue()}")
        report: dict[str, Any] = json.loads(printed.getvalue())
        return report
    environment = dict(os.environ)
    if threads:
        environment["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"pfx train failed ({done.returncode}): {done.stdout or done.stderr}")
    report = json.loads(done.stdout)
    return report
