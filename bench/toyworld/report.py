"""Stage 5's tables (Markdown) and figure (one PNG) from :class:`toyworld.measure.Measurements`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np

from .measure import ALIGNMENT

__all__ = ["figure", "tables"]

ROWS = {
    "training_images": "training images among themselves",
    "new_drawings": "new drawings of the object (ceiling)",
    "superclass": "base model, superclass word",
    "locked": "Perfusion, keys locked (paper)",
    "learned_keys": "Perfusion, keys learned (ablation)",
}


def _cell(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def tables(summary: dict[str, Any]) -> str:
    """The four tables — fidelity, alignment, β sweep, composition — as Markdown."""
    names = list(summary["fidelity"])
    beta, tau = summary["inference_gate"]
    parts = []
    header = ["", *(f"{n}: {what}" for n in names for what in ("similarity", "recognised"))]
    rows = [
        [
            label,
            *(
                _cell(summary["fidelity"][n][key][w])
                for n in names
                for w in ("similarity", "recognised")
            ),
        ]
        for key, label in ROWS.items()
    ]
    parts.append(f"**Fidelity** (β = {beta}, τ = {tau})\n\n" + _table(header, rows))

    changes = [f"{attribute} {value}" for attribute, value in ALIGNMENT]
    header = ["", *changes, "mean"]
    rows = []
    for n in names:
        for key in ("superclass", "locked", "learned_keys"):
            rates = summary["alignment"][n][key]
            keys = [f"{a}:{v}" for a, v in ALIGNMENT]
            rows.append([f"{n}: {ROWS[key]}", *(_cell(rates[k]) for k in [*keys, "mean"])])
    parts.append(
        "**Prompt alignment** (instrument reads the attribute asked for)\n\n" + _table(header, rows)
    )

    header = ["β"]
    for variant in ("locked", "learned_keys"):
        header += [f"{variant}: fidelity", f"{variant}: fidelity (edited)", f"{variant}: alignment"]
    rows = []
    for index, point in enumerate(summary["sweep"][names[0]]["locked"]):
        row = [f"{point['beta']:g}"]
        for variant in ("locked", "learned_keys"):
            points = [summary["sweep"][n][variant][index] for n in names]
            row += [
                _cell(float(np.mean([p["fidelity"]["similarity"] for p in points]))),
                _cell(float(np.mean([p["fidelity_edited"]["similarity"] for p in points]))),
                _cell(float(np.mean([p["alignment"]["mean"] for p in points]))),
            ]
        rows.append(row)
    superclass = [summary["sweep"][n]["superclass"][0] for n in names]
    base = [
        _cell(float(np.mean([p["fidelity"]["similarity"] for p in superclass]))),
        _cell(float(np.mean([p["fidelity_edited"]["similarity"] for p in superclass]))),
        _cell(float(np.mean([p["alignment"]["mean"] for p in superclass]))),
    ]
    rows.append(["superclass word", *base, "", "", ""])
    parts.append(
        f"**β sweep** (τ = {tau}; mean over {', '.join(names)}; fidelity = similarity to the "
        "training images)\n\n" + _table(header, rows)
    )

    if "composition" in summary:
        header = ["two objects in one prompt", "left found", "right found", "both found"]
        labels = {
            "superclass": "base model, the two superclass words",
            "locked": "both concepts, keys locked",
            "learned_keys": "both concepts, keys learned",
        }
        rows = [
            [label, *(_cell(summary["composition"][key][w]) for w in ("left", "right", "both"))]
            for key, label in labels.items()
        ]
        parts.append("**Composition**\n\n" + _table(header, rows))
    return "\n\n".join(parts) + "\n"


def _strip(images: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` images side by side [s, count·s, 3] (black where there are fewer)."""
    size = images.shape[1]
    row = np.zeros((size, count * size, 3), np.uint8)
    for k, image in enumerate(images[:count]):
        row[:, k * size : (k + 1) * size] = image
    return row


def figure(summary: dict[str, Any], shown: dict[str, np.ndarray], path: Path) -> None:
    """One PNG: the β sweep's trade-off (alignment against fidelity on the edited prompts, per
    concept and variant, the superclass word as a reference point) and example images."""
    fig, (curve, grid) = plt.subplots(1, 2, figsize=(14, 7), gridspec_kw={"width_ratios": [1, 1.1]})
    markers = {"locked": "o-", "learned_keys": "s--"}
    for name, sweep in summary["sweep"].items():
        for variant, style in markers.items():
            points = sweep[variant]
            x = [p["alignment"]["mean"] for p in points]
            y = [p["fidelity_edited"]["similarity"] for p in points]
            (line,) = curve.plot(x, y, style, label=f"{name}, {ROWS[variant].split(', ')[1]}")
            for p, xi, yi in zip(points, x, y, strict=True):
                curve.annotate(
                    f"β={p['beta']:g}",
                    (xi, yi),
                    fontsize=7,
                    color=line.get_color(),
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        base = sweep["superclass"][0]
        curve.plot(
            base["alignment"]["mean"], base["fidelity_edited"]["similarity"], "k*", markersize=10
        )
        curve.annotate(
            f"base, superclass ({name})",
            (base["alignment"]["mean"], base["fidelity_edited"]["similarity"]),
            fontsize=7,
            xytext=(4, -10),
            textcoords="offset points",
        )
    curve.set_xlabel("prompt alignment (instrument reads the attribute asked for)")
    curve.set_ylabel("fidelity (feature similarity to the training images), edited prompts")
    curve.set_title(f"β sweep at inference, τ = {summary['inference_gate'][1]}")
    curve.legend(fontsize=8)
    curve.grid(alpha=0.3)

    columns = 10
    labelled = [(key.replace("/", ": ").replace("_", " "), images) for key, images in shown.items()]
    rows = [_strip(images, columns) for _, images in labelled]
    size = rows[0].shape[0]
    gap = np.full((2, columns * size, 3), 255, np.uint8)
    stacked = np.concatenate([part for row in rows for part in (row, gap)])
    grid.imshow(stacked, interpolation="nearest")
    grid.set_yticks([k * (size + 2) + size / 2 for k in range(len(rows))])
    grid.set_yticklabels([label for label, _ in labelled], fontsize=7)
    grid.set_xticks([])
    grid.set_title("examples (edited: gray, white, red, blue, green; two each)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
