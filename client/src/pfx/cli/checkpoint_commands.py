"""``pfx covariance`` and ``pfx import``: files made from a local model or checkpoint.

``covariance`` estimates a text encoder's input covariance C over captions and saves it with the
encoder's fingerprint (:mod:`perfusion_runtime.covariance`); ``import`` converts a concept
trained with perfusion-pytorch or ChenDarYen's Perfusion code into a v1 concept file
(:mod:`perfusion_runtime.importers`, spec/importers.md). Checkpoints are read with torch's
weights-only loader only. torch and the runtime are imported inside the commands.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

import perfusion_format as pf

from . import output
from .models import check_output_folder, load_pipeline, runtime
from .output import JsonFlag

__all__ = ["covariance", "import_checkpoint", "register"]

_FAMILIES = ("sd-1", "sd-2", "sdxl", "custom")
_DTYPES = {"fp32": "F32", "fp16": "F16", "bf16": "BF16"}

ModelOption = Annotated[
    Path, typer.Option("--model", help="A local diffusers pipeline folder.", show_default=False)
]
OutOption = Annotated[Path, typer.Option("--out", "-o", help="The file to write.")]


def _emit(payload: dict[str, Any], title: str) -> None:
    """Print ``payload``: as JSON, or ``title`` then one line per field but the output path."""

    def render(console: Console) -> None:
        console.print(output.cell(title), soft_wrap=True)
        fields = [(key.replace("_", " "), value) for key, value in payload.items()]
        output.print_fields(console, fields[1:])

    output.emit(payload, render)


def covariance(
    model: ModelOption,
    out: OutOption,
    captions: Annotated[
        Path | None,
        typer.Option(
            "--captions",
            help="A text file, one caption a line ('#' lines skipped). Default: the runtime's "
            "320 bundled captions.",
            show_default=False,
        ),
    ] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Captions encoded at once.")] = 32,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:1 …")] = "auto",
    json: JsonFlag = False,
) -> None:
    """Estimate the text encoders' input covariance C and save it (safetensors, with the
    encoders' fingerprint): C = (1/N) Σ e eᵀ over the non-padding token encodings of captions."""
    check_output_folder(out)
    pr = runtime("covariance")
    if captions is None:
        texts = pr.default_captions()
    else:
        texts = pr.parse_captions(captions.read_text(encoding="utf-8"))
        if not texts:
            raise typer.BadParameter(f"{captions} holds no caption", param_hint="--captions")
    started = time.perf_counter()
    pipe = load_pipeline(model, device, "fp32")
    with output.progress_bar("encoding captions") as progress:
        task = progress.add_task("captions", total=len(texts))
        result = pr.estimate_covariance(
            pipe,
            texts,
            batch_size=batch,
            progress=lambda done, _: progress.update(task, completed=done),
        )
    saved = pr.save_covariance(out, result, pipe)
    size = saved.matrix.shape[0]
    payload = {
        "output": str(out),
        "captions": saved.captions,
        "tokens": saved.tokens,
        "text_dim": size,
        "text_encoder_fingerprint": saved.text_encoder,
        "seconds": round(time.perf_counter() - started, 3),
    }
    _emit(payload, f"Wrote {out} (C, {size}×{size})")


def import_checkpoint(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            help="A perfusion-pytorch or ChenDarYen Perfusion checkpoint (.pt, .ckpt).",
            metavar="FILE",
            show_default=False,
        ),
    ],
    out: OutOption,
    base_family: Annotated[
        str,
        typer.Option(
            "--base-family",
            help="The base family the checkpoint was trained on: sd-1, sd-2, sdxl or custom.",
            show_default=False,
        ),
    ],
    superclass: Annotated[
        str,
        typer.Option(
            "--superclass",
            help="The superclass word the keys are locked to, e.g. teddy (checkpoints do not "
            "record it).",
            show_default=False,
        ),
    ],
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            help="The base model's diffusers folder: gives the base fingerprint (and the layers "
            "of a custom family); perfusion-pytorch keys are then stored locked to the "
            "superclass.",
            show_default=False,
        ),
    ] = None,
    base_fingerprint: Annotated[
        str | None,
        typer.Option(
            "--base-fingerprint",
            help="sha256:… of the base weights (spec §4.3), when the model is not at hand.",
            show_default=False,
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", help="The trigger token.  [default: <SUPERCLASS>]"),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="The concept's name.  [default: SUPERCLASS]")
    ] = None,
    position: Annotated[
        int,
        typer.Option(
            "--position",
            min=0,
            help="ChenDarYen checkpoints: the token position whose targets are kept (5 is the "
            "concept token of 'a photo of a <token>').",
        ),
    ] = 5,
    concept_index: Annotated[
        int | None,
        typer.Option(
            "--concept-index",
            min=0,
            help="perfusion-pytorch checkpoints holding several concepts: which one.",
            show_default=False,
        ),
    ] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="fp32, fp16 or bf16.")] = "fp32",
    json: JsonFlag = False,
) -> None:
    """Convert a concept saved by perfusion-pytorch or ChenDarYen's Perfusion code into a
    concept file. The checkpoint is read with torch's weights-only loader: a file that needs
    anything else is refused unread (IMPORT_UNSAFE)."""
    if base_family not in _FAMILIES:
        raise typer.BadParameter(f"one of {', '.join(_FAMILIES)}", param_hint="--base-family")
    if dtype not in _DTYPES:
        raise typer.BadParameter("one of fp32, fp16, bf16", param_hint="--dtype")
    check_output_folder(out)
    pr = runtime("import")
    pipe = None if model is None else load_pipeline(model, "cpu", "fp32")
    concept = pr.import_checkpoint(
        checkpoint,
        family=base_family,
        superclass=superclass,
        pipe=pipe,
        base_fingerprint=base_fingerprint,
        token=token,
        name=name,
        position=position,
        concept_index=concept_index,
        dtype=_DTYPES[dtype],
    )
    pf.save(concept, out)
    payload: dict[str, Any] = {
        "output": str(out),
        "source": concept.training["source"],
        "name": concept.name,
        "token": concept.token,
        "superclass": concept.superclass,
        "family": concept.family.name,
        "layers": len(concept.layers),
        "keys": "locked to superclass" if concept.superclass_input is not None else "explicit",
        "base_fingerprint": concept.base_fingerprint,
        "weights_digest": concept.weights_digest,
    }
    _emit(payload, f"Wrote {out} from a {payload['source']} checkpoint")


def register(app: typer.Typer) -> None:
    """Add ``covariance`` and ``import`` to ``app``."""
    app.command()(covariance)
    app.command("import")(import_checkpoint)
