"""``pfx generate``: an image from a local diffusers pipeline with concepts applied.

torch, diffusers and perfusion_runtime are imported inside the command, so the rest of the CLI
starts fast and works where they are not installed (``pip install 'pfx[runtime]'`` adds them).
"""

from __future__ import annotations

import io
import re
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

import perfusion_format as pf

from . import output
from .models import DTYPES, check_output_folder, load_pipeline, runtime
from .output import JsonFlag

__all__ = ["generate", "register"]

_SIZE = re.compile(r"([1-9][0-9]*)x([1-9][0-9]*)")


def _parse_size(text: str) -> tuple[int, int]:
    match = _SIZE.fullmatch(text)
    if match is None:
        raise typer.BadParameter("expected WIDTHxHEIGHT, e.g. 512x512")
    width, height = int(match.group(1)), int(match.group(2))
    if width % 8 or height % 8:
        raise typer.BadParameter("width and height must be multiples of 8")
    return width, height


def _write_png(image: Any, path: Path) -> None:
    """Save a PIL image as PNG atomically (:func:`perfusion_format.write_atomic`)."""
    encoded = io.BytesIO()
    image.save(encoded, format="PNG")
    pf.write_atomic(path, encoded.getvalue())


def generate(
    model: Annotated[
        Path, typer.Option("--model", help="A local diffusers pipeline folder.", show_default=False)
    ],
    concepts: Annotated[
        list[str],
        typer.Option(
            "--concept",
            "-c",
            help="A concept file, or a registry reference (NS/NAME[:TAG], NS/NAME@sha256:…) "
            "that is pulled and verified first; repeatable.",
            show_default=False,
        ),
    ],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The prompt, with trigger tokens.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the PNG.")],
    negative_prompt: Annotated[
        str | None, typer.Option("--negative-prompt", help="What to steer away from.")
    ] = None,
    beta: Annotated[
        float | None, typer.Option("--beta", help="Gate threshold β for every concept.")
    ] = None,
    tau: Annotated[
        float | None, typer.Option("--tau", help="Gate temperature τ for every concept.")
    ] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Denoising steps.")] = 30,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    guidance: Annotated[float, typer.Option("--guidance", help="Classifier-free guidance.")] = 7.5,
    size: Annotated[
        str | None, typer.Option("--size", help="WIDTHxHEIGHT (default: the model's).")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:1 …")] = "auto",
    dtype: Annotated[
        str, typer.Option("--dtype", help="auto (fp16 on CUDA, fp32 on CPU), fp32, fp16, bf16.")
    ] = "auto",
    global_locking: Annotated[
        bool, typer.Option("--global-locking", help="Keys from the superclass prompt.")
    ] = False,
    allow_base_mismatch: Annotated[
        bool,
        typer.Option("--allow-base-mismatch", help="Apply concepts made for other base weights."),
    ] = False,
    allow_unsigned: Annotated[
        bool,
        typer.Option(
            "--allow-unsigned",
            help="Pull references that are unsigned or not signed by a key you trust.",
        ),
    ] = False,
    plain_http: Annotated[
        bool,
        typer.Option(
            "--plain-http", help="Pull oci:// references over http (loopback registries)."
        ),
    ] = False,
    json: JsonFlag = False,
) -> None:
    """Generate an image with concepts applied to a local diffusers pipeline (no downloads)."""
    dimensions = _parse_size(size) if size else None
    if dtype not in ("auto", *DTYPES):
        raise typer.BadParameter("one of auto, fp32, fp16, bf16", param_hint="--dtype")
    check_output_folder(out)
    # bad files and refused pulls fail before any model loads
    loaded = [_concept(source, allow_unsigned, plain_http) for source in concepts]
    pr = runtime("generate")
    import torch

    started = time.perf_counter()
    pipe = load_pipeline(model, device, dtype)
    options: dict[str, Any] = {}
    if dimensions:
        options["width"], options["height"] = dimensions
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with (
        pr.apply(
            pipe,
            loaded,
            beta=beta,
            tau=tau,
            global_locking=global_locking,
            allow_base_mismatch=allow_base_mismatch,
        ) as handle,
        output.progress_bar("denoising") as progress,
    ):
        task = progress.add_task("denoising", total=steps)

        def advance(
            _pipe: Any, _step: int, _timestep: Any, kwargs: dict[str, Any]
        ) -> dict[str, Any]:
            progress.advance(task)
            return kwargs

        image = pipe(
            prompt,
            negative_prompt=negative_prompt,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generator,
            callback_on_step_end=advance,
            **options,
        ).images[0]
        gates = {token: handle.gate(token)._asdict() for token in handle.tokens}
    _write_png(image, out)
    payload = {
        "output": str(out),
        "prompt": prompt,
        "concepts": gates,
        "seed": seed,
        "steps": steps,
        "width": image.width,
        "height": image.height,
        "seconds": round(time.perf_counter() - started, 3),
    }

    def render(console: Console) -> None:
        console.print(output.cell(f"Wrote {out} ({image.width}×{image.height})"), soft_wrap=True)
        output.print_fields(
            console,
            [(f"concept {token}", f"β={g['beta']:g} τ={g['tau']:g}") for token, g in gates.items()]
            + [("seed", seed), ("steps", steps), ("seconds", payload["seconds"])],
        )

    output.emit(payload, render)


def _concept(source: str, allow_unsigned: bool, plain_http: bool) -> pf.Concept:
    """The concept in the file ``source``, else the one the reference ``source`` names (in the
    pfx registry, or ``oci://…`` in any OCI registry), pulled through the cache and the trust
    policy."""
    from pfx.oci_reference import is_oci_reference

    if is_oci_reference(source):
        from pfx.oci import pull as pull_oci

        pulled = pull_oci(source, allow_unsigned=allow_unsigned, plain_http=plain_http)
        return pf.load(pulled.path)
    path = Path(source)
    if path.exists() or source.endswith(".safetensors") or "/" not in source:
        return pf.load(path)
    from pfx import transfer

    return pf.load(transfer.pull(source, allow_unsigned=allow_unsigned).path)


def register(app: typer.Typer) -> None:
    """Add ``generate`` to ``app``."""
    app.command()(generate)
