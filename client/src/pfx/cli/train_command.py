"""``pfx train``: a concept from a folder of images, by key-locked rank-one training (Perfusion)
on a local diffusers pipeline (:func:`perfusion_runtime.train`).

Everything that can be checked without the model (the output folder, the captions, the signing
key) is checked before it loads, and the runtime checks the images, masks, token, superclass,
covariance and checkpoint before the first step. torch, diffusers and perfusion_runtime are
imported inside the command.

The training options default to None and only those given reach
:class:`perfusion_runtime.TrainingConfig`, so its defaults (the paper's) are the defaults; ``pfx
train --help`` shows them, read from the installed runtime.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.progress import TextColumn
from typer.core import TyperCommand

import perfusion_format as pf

from . import output
from .models import check_output_folder, load_pipeline, runtime
from .output import JsonFlag

__all__ = ["register", "train"]

_PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def _checkpoint_folder(out: Path) -> Path:
    """``teddy.perfusion.safetensors`` → ``teddy.checkpoint`` beside it."""
    return out.with_name(out.name.removesuffix(pf.FILE_SUFFIX) + ".checkpoint")


def train(
    model: Annotated[
        Path, typer.Option("--model", help="A local diffusers pipeline folder.", show_default=False)
    ],
    images: Annotated[
        Path,
        typer.Option(
            "--images",
            help="A folder of PNG, JPEG or WebP pictures of the concept.",
            show_default=False,
        ),
    ],
    token: Annotated[
        str,
        typer.Option("--token", help="The new trigger token, e.g. <teddy>.", show_default=False),
    ],
    superclass: Annotated[
        str,
        typer.Option(
            "--superclass", help="A one-token word for what it is, e.g. teddy.", show_default=False
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="The concept file to write.")],
    masks: Annotated[
        Path | None,
        typer.Option(
            "--masks",
            help="A folder of grayscale masks (white: the subject), one per image with the same "
            "file stem and size; they weight the loss.",
            show_default=False,
        ),
    ] = None,
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="Optimizer steps.")] = None,
    batch: Annotated[
        int | None, typer.Option("--batch", min=1, help="Images per forward pass.")
    ] = None,
    accumulate: Annotated[
        int | None, typer.Option("--accumulate", min=1, help="Forward passes per step.")
    ] = None,
    lr_values: Annotated[
        float | None, typer.Option("--lr-values", help="Learning rate of the value targets.")
    ] = None,
    lr_embedding: Annotated[
        float | None, typer.Option("--lr-embedding", help="Learning rate of the token embedding.")
    ] = None,
    beta: Annotated[
        float | None, typer.Option("--beta", help="Gate threshold β in training.")
    ] = None,
    tau: Annotated[
        float | None, typer.Option("--tau", help="Gate temperature τ in training.")
    ] = None,
    covariance: Annotated[
        Path | None,
        typer.Option(
            "--covariance",
            help="A covariance file from `pfx covariance` for this model's text encoders.",
            show_default=False,
        ),
    ] = None,
    captions: Annotated[
        Path | None,
        typer.Option(
            "--captions",
            help="Estimate C over these captions (one a line) instead. Default: the runtime's "
            "bundled captions.",
            show_default=False,
        ),
    ] = None,
    resolution: Annotated[
        int | None,
        typer.Option(
            "--resolution",
            min=8,
            help="Training size in pixels. Default: the model's (512 for SD 1.5).",
            show_default=False,
        ),
    ] = None,
    templates: Annotated[
        list[str] | None,
        typer.Option(
            "--template",
            help="A prompt template with {} where the token goes, e.g. 'a photo of a {}'; "
            "repeat for several. Default: the paper's ten photo templates.",
            show_default=False,
        ),
    ] = None,
    flip: Annotated[
        bool | None,
        typer.Option("--flip/--no-flip", help="Random horizontal flips of the images."),
    ] = None,
    lock_keys: Annotated[
        bool | None,
        typer.Option(
            "--lock-keys/--learn-keys",
            help="Lock the keys to the superclass (the paper's method), or learn one key target "
            "per layer too (its ablation; the concept then overfits more).",
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", min=0, help="Random seed.")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:1 …")] = "auto",
    dtype: Annotated[
        str | None,
        typer.Option(
            "--dtype",
            help="Compute precision: auto (bf16 or fp16 autocast on CUDA, fp32 on CPU), fp32, "
            "fp16, bf16. Weights load in fp32.",
        ),
    ] = None,
    checkpoint_every: Annotated[
        int | None,
        typer.Option(
            "--checkpoint-every", min=0, help="Save a checkpoint every N steps (0: never)."
        ),
    ] = None,
    checkpoint_dir: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint-dir",
            help="Where checkpoints go. Default: beside OUT, teddy.checkpoint for "
            "teddy.perfusion.safetensors.",
            show_default=False,
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Continue from the checkpoint (a fresh start when there is none)."
        ),
    ] = False,
    sign: Annotated[
        Path | None,
        typer.Option(
            "--sign",
            help="Sign the concept with this private key.",
            metavar="KEY",
            show_default=False,
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="The concept's name. Default: the superclass.")
    ] = None,
    json: JsonFlag = False,
) -> None:
    """Train a concept on the pictures in --images and write it to OUT: Perfusion learns the
    token's embedding and one value target per cross-attention layer, keys locked to the
    superclass (--learn-keys: key targets too); the model's weights are untouched. Progress and
    loss show on stderr."""
    if covariance is not None and captions is not None:
        raise typer.BadParameter(
            "give --covariance or --captions, not both", param_hint="--captions"
        )
    if dtype is not None and dtype not in _PRECISIONS:
        raise typer.BadParameter("one of auto, fp32, fp16, bf16", param_hint="--dtype")
    check_output_folder(out)
    key = None
    if sign is not None:
        with output.naming(sign):
            key = pf.load_private_key(sign)
    pr = runtime("train")
    texts = None if captions is None else pr.parse_captions(captions.read_text(encoding="utf-8"))
    if texts == []:
        raise typer.BadParameter(f"{captions} holds no caption", param_hint="--captions")
    if checkpoint_dir is None and (checkpoint_every or resume):
        checkpoint_dir = _checkpoint_folder(out)

    started = time.perf_counter()
    pipe = load_pipeline(model, device, "fp32")
    matrix = None if covariance is None else pr.load_covariance(covariance, pipe).matrix
    given = {
        "steps": steps,
        "batch": batch,
        "accumulate": accumulate,
        "lr_values": lr_values,
        "lr_embedding": lr_embedding,
        "beta": beta,
        "tau": tau,
        "resolution": resolution,
        "seed": seed,
        "dtype": dtype,
        "checkpoint_every": checkpoint_every,
        "templates": tuple(templates) if templates else None,
        "flip": flip,
        "lock_keys": lock_keys,
    }
    config = pr.TrainingConfig(
        token=token,
        superclass=superclass,
        **{field: value for field, value in given.items() if value is not None},
    )
    reports: list[Any] = []
    with output.progress_bar("training", TextColumn("loss {task.fields[loss]}")) as progress:
        task = progress.add_task("training", total=config.steps, loss="…")

        def report(step: pr.TrainingProgress) -> None:
            reports.append(step)
            progress.update(task, completed=step.step, loss=f"{step.loss:.4f}")

        concept = pr.train(
            pipe,
            images,
            config,
            masks=masks,
            covariance=matrix,
            captions=texts,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            progress=report,
            name=name or superclass,
        )
    if key is not None:
        concept = pf.sign(concept, key)
    data = pf.dumps(concept)
    pf.write_atomic(out, data)
    summary = concept.training
    payload = {
        "output": str(out),
        "token": concept.token,
        "superclass": concept.superclass,
        "steps": summary["steps"],
        "resumed_from": config.steps - len(reports),
        "images": summary["images"],
        "final_loss": summary["final_loss"],
        "seconds": round(time.perf_counter() - started, 3),
        "bytes": len(data),
        "weights_digest": concept.weights_digest,
        "content_digest": pf.content_digest(data),
        "signed_by": None if key is None else key.public_key.key_id,
        "checkpoint_dir": None if checkpoint_dir is None else str(checkpoint_dir),
    }

    def render(console: Console) -> None:
        console.print(output.cell(f"Wrote {out} ({len(data):,} bytes)"), soft_wrap=True)
        shown = {**payload, "final_loss": f"{payload['final_loss']:.4g}"}  # JSON keeps all digits
        fields = [(label.replace("_", " "), value) for label, value in shown.items()]
        output.print_fields(console, [field for field in fields[1:] if field[1] is not None])

    output.emit(payload, render)


class _TrainCommand(TyperCommand):
    """``pfx train``: its help shows :class:`perfusion_runtime.TrainingConfig`'s defaults for the
    options that default to None (and so to the config), where the runtime is installed."""

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Render the help with the config's defaults in place of None, then put None back."""
        defaults = _config_defaults()
        shown = [param for param in self.params if param.name in defaults and param.show_default]
        try:
            for param in shown:
                param.default = defaults[param.name]
            super().format_help(ctx, formatter)
        finally:
            for param in shown:
                param.default = None


def _config_defaults() -> dict[str | None, object]:
    """``TrainingConfig``'s defaults by field name; none when the runtime is not installed
    (only ``--help`` imports it here)."""
    try:
        import perfusion_runtime as pr
    except ImportError:
        return {}
    return {field.name: field.default for field in dataclasses.fields(pr.TrainingConfig)}


def register(app: typer.Typer) -> None:
    """Add ``train`` to ``app``."""
    app.command(cls=_TrainCommand)(train)
