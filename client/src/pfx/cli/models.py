"""What the commands that run models share (``generate``, ``train``, ``covariance``,
``import``): the runtime, imported only when such a command runs, and local pipelines loaded
from disk with one-line errors.

torch, diffusers and perfusion_runtime are imported inside these functions, never at module
level, so the rest of the CLI starts fast and works where they are not installed.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

from pfx.errors import ClientError, ErrorCode

__all__ = ["DTYPES", "check_output_folder", "load_pipeline", "runtime"]

#: ``--dtype`` values and the torch dtypes they name.
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def runtime(command: str) -> ModuleType:
    """perfusion_runtime (with torch and diffusers), or RUNTIME_MISSING naming what is not
    installed and how to get it."""
    try:
        import perfusion_runtime
    except ImportError as error:
        raise ClientError(
            ErrorCode.RUNTIME_MISSING,
            f"pfx {command} needs the runtime ({error.name} is missing): "
            "pip install 'pfx[runtime]'",
        ) from error
    return perfusion_runtime


def check_output_folder(out: Path) -> None:
    """IO_ERROR (via FileNotFoundError) unless the folder ``out`` is to be written in exists —
    checked before any model loads."""
    if not out.parent.is_dir():
        raise FileNotFoundError(2, "No such folder", str(out.parent))


def load_pipeline(model: Path, device: str, dtype: str) -> Any:
    """The diffusers pipeline saved in ``model``, from local files only, on ``device``
    (``auto``: CUDA when available) in ``dtype`` (``auto``: fp16 on CUDA, fp32 on the CPU);
    MODEL_INVALID with the first line of the reason when it does not load."""
    import torch
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    if not (model / "model_index.json").is_file():
        raise ClientError(
            ErrorCode.MODEL_INVALID,
            f"{model}: not a diffusers pipeline folder (no model_index.json)",
        )
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "fp16" if device.startswith("cuda") else "fp32"
    # Failures must stay one line on stderr: no loading bars, library notices or deprecations.
    for library in (diffusers_logging, transformers_logging):
        library.set_verbosity_error()
        library.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch_dtype", category=FutureWarning)
            pipe = DiffusionPipeline.from_pretrained(
                model, local_files_only=True, torch_dtype=getattr(torch, DTYPES[dtype])
            )
    except (OSError, ValueError, KeyError, TypeError) as error:
        first_line = (
            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        )
        raise ClientError(ErrorCode.MODEL_INVALID, f"{model}: {first_line}") from error
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
