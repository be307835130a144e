"""The instrument: a small CNN that reads shape, colour and background off a toy-world image, and
whose penultimate features give an image-similarity score (cosine) — the toy world's CLIP.

It reads one object per image; a two-object image is read as its two halves
(:func:`toyworld.world.halves`), which is also how its two-object training images are shown to it.
Training images get random blur and noise so that the readings hold on generated images too.
Saved as safetensors weights plus a JSON config; nothing is pickled.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .world import Attribute, Sample, World, halves

__all__ = [
    "ATTRIBUTES",
    "Instrument",
    "InstrumentSettings",
    "Progress",
    "accuracy",
    "to_tensor",
    "train_instrument",
]

ATTRIBUTES: tuple[Attribute, ...] = ("shape", "colour", "background")
#: Called as training goes: (steps done, steps in all, a short status line).
Progress = Callable[[int, int, str], None]


def to_tensor(images: np.ndarray) -> Tensor:
    """uint8 images [n, h, w, 3] as float [n, 3, h, w] in [-1, 1] (what the VAE reads too)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)


@dataclass(frozen=True)
class InstrumentSettings:
    """How the instrument is built and trained."""

    steps: int = 600
    batch: int = 128
    lr: float = 3e-3
    width: int = 16
    features: int = 128
    seed: int = 0


class _Net(nn.Module):
    """Three conv stages (one conv of width w, two of 2w, one of 4w; each stage halves the side),
    global average pooling, a ``features``-wide layer (the similarity features) and one linear
    head per attribute. One conv at full resolution keeps it fast on a CPU."""

    def __init__(self, width: int, features: int, classes: tuple[int, int, int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for stage in ((width,), (2 * width, 2 * width), (4 * width,)):
            for out in stage:
                layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
                channels = out
            layers.append(nn.MaxPool2d(2))
        self.trunk = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embed = nn.Sequential(nn.Linear(channels, features), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(features, count) for count in classes)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Features [n, features] and the logits of each attribute."""
        features = self.embed(self.trunk(x))
        return features, [head(features) for head in self.heads]


def _blur(x: Tensor) -> Tensor:
    """x blurred by a 5×5 Gaussian of σ = 1 (per channel, edges replicated)."""
    taps = torch.exp(-(torch.arange(-2.0, 3.0) ** 2) / 2)
    kernel = (taps[:, None] * taps[None, :] / taps.sum() ** 2).expand(3, 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), kernel, groups=3)


def _augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """Each image blurred by a random amount and given Gaussian noise of a random strength."""
    n = x.shape[0]
    amount = torch.rand(n, 1, 1, 1, generator=generator)
    noise = torch.rand(n, 1, 1, 1, generator=generator) * 0.1
    x = x + amount * (_blur(x) - x)
    return x + noise * torch.randn(x.shape, generator=generator)


def _per_object(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Images with one object each and their labels [n, 3]: two-object images as two halves."""
    if sample.objects == 1:
        return sample.images, sample.labels[:, 0]
    left, right = halves(sample.images)
    return np.concatenate([left, right]), np.concatenate([sample.labels[:, 0], sample.labels[:, 1]])


@dataclass
class Instrument:
    """A trained reader of one world's attributes."""

    net: _Net
    settings: InstrumentSettings
    names: dict[str, tuple[str, ...]]

    @torch.no_grad()
    def _run(self, images: np.ndarray, batch: int = 512) -> tuple[Tensor, list[Tensor]]:
        self.net.eval()
        parts = [self.net(to_tensor(images[i : i + batch])) for i in range(0, len(images), batch)]
        features = torch.cat([p[0] for p in parts])
        logits = [torch.cat([p[1][k] for p in parts]) for k in range(len(ATTRIBUTES))]
        return features, logits

    def read(self, images: np.ndarray, objects: Literal[1, 2] = 1) -> np.ndarray:
        """Labels [n, objects, 3] (shape, colour, background indices) read off uint8 images
        [n, h, w, 3]; with two objects, the left half's object first."""
        pieces = (images,) if objects == 1 else halves(images)
        read = [torch.stack([z.argmax(1) for z in self._run(p)[1]], 1) for p in pieces]
        return torch.stack(read, 1).numpy()

    def features(self, images: np.ndarray) -> Tensor:
        """Penultimate features [n, features] of uint8 images [n, h, w, 3], unit length."""
        return F.normalize(self._run(images)[0], dim=1)

    def similarity(self, images: np.ndarray, others: np.ndarray) -> np.ndarray:
        """Cosine similarities [n, m] between the features of two sets of images."""
        return (self.features(images) @ self.features(others).T).numpy()

    def save(self, folder: Path) -> None:
        """Write ``model.safetensors`` and ``config.json`` to ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        save_file(self.net.state_dict(), folder / "model.safetensors")
        config = {"settings": asdict(self.settings), "names": self.names}
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> Instrument:
        """The instrument :meth:`save` wrote to ``folder``."""
        config = json.loads((folder / "config.json").read_text())
        settings = InstrumentSettings(**config["settings"])
        names = {key: tuple(value) for key, value in config["names"].items()}
        net = _Net(settings.width, settings.features, _classes(names))
        net.load_state_dict(load_file(folder / "model.safetensors"))
        return cls(net.eval(), settings, names)


def _classes(names: dict[str, tuple[str, ...]]) -> tuple[int, int, int]:
    shapes, colours, backgrounds = (len(names[attribute]) for attribute in ATTRIBUTES)
    return shapes, colours, backgrounds


def train_instrument(
    world: World,
    samples: list[Sample],
    settings: InstrumentSettings,
    progress: Progress | None = None,
) -> Instrument:
    """An instrument trained on ``samples`` (of one or two objects) of ``world``: Adam with a
    one-cycle schedule, cross-entropy summed over the three attributes."""
    pairs = [_per_object(sample) for sample in samples]
    images = to_tensor(np.concatenate([p[0] for p in pairs]))
    labels = torch.from_numpy(np.concatenate([p[1] for p in pairs]))
    names = {attribute: world.names(attribute) for attribute in ATTRIBUTES}
    torch.manual_seed(settings.seed)
    net = _Net(settings.width, settings.features, _classes(names))
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings.lr, settings.steps)
    generator = torch.Generator().manual_seed(settings.seed)
    net.train()
    for step in range(settings.steps):
        index = torch.randint(len(images), (settings.batch,), generator=generator)
        _, logits = net(_augment(images[index], generator))
        loss = torch.stack([F.cross_entropy(z, labels[index, k]) for k, z in enumerate(logits)])
        loss = loss.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if progress is not None:
            progress(step + 1, settings.steps, f"loss {loss.item():.3f}")
    return Instrument(net.eval(), settings, names)


def accuracy(instrument: Instrument, sample: Sample) -> dict[str, float]:
    """The fraction of objects of ``sample`` whose attribute the instrument reads right."""
    read = instrument.read(sample.images, 2 if sample.objects == 2 else 1)
    hits = read == sample.labels
    return {attribute: float(hits[..., k].mean()) for k, attribute in enumerate(ATTRIBUTES)}
