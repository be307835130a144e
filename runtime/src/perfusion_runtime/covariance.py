"""The input covariance C of a text encoder: estimated from captions, solved against, and kept
in a file.

C = (1/N) Σ e eᵀ (paper §3; :func:`estimate_covariance`), uncentered, over the encodings of the
non-padding tokens of a caption corpus, is shared by every concept and layer of one text encoder.
A concept needs only u = C⁻¹ i* (:func:`gate_direction`), solved in float64 with a small ridge.
C costs a pass of the text encoder over the captions, so training and the exact multi-concept
composition read it from a file (``pfx covariance`` writes one).

A covariance file is a safetensors file (any safetensors reader opens it) holding

- one tensor, ``covariance``: F32 ``[d, d]``, C over the concatenated encodings the UNet reads
  (d = 768 for SD 1.x, 1024 for SD 2.x, 2048 for SDXL — what :func:`estimate_covariance`
  returns), symmetric and finite;
- string metadata: ``perfusion.format`` = ``perfusion-covariance``, ``perfusion.version`` =
  ``1.0``, ``perfusion.captions`` and ``perfusion.tokens`` (decimal counts of the captions and of
  the non-padding tokens averaged over) and ``perfusion.text_encoder_fingerprint``.

The **text encoder fingerprint** (:func:`~perfusion_runtime.text_encoder_fingerprint`) is
``sha256:`` + hex SHA-256 over the base fingerprint's byte layout (spec §4.3: for each tensor its
name, rank, dimensions and packed sign bits, after the domain string
``perfusion-base-fingerprint/v1``) applied to every parameter of the pipeline's text encoders,
named ``<component>.<parameter>`` (``text_encoder.text_model.embeddings.token_embedding.weight``
…), encoders in family order, parameters sorted by name. Sign bits keep it the same whether the
model is loaded in float32, float16 or bfloat16; a fine-tuned or different encoder flips many of
them. :func:`load_covariance` with a pipeline refuses a file made for other text encoders or of
another width (COVARIANCE_MISMATCH); a file that is not a covariance file is INVALID_COVARIANCE.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import Tensor

from perfusion_format import is_digest, write_atomic

from .errors import PerfusionRuntimeError, RuntimeErrorCode
from .pipeline import pipeline_layout, text_encoder_fingerprint
from .prompts import encode_prompts

__all__ = [
    "COVARIANCE_FORMAT",
    "COVARIANCE_VERSION",
    "Covariance",
    "build_covariance",
    "check_covariance",
    "covariance_factor",
    "default_captions",
    "estimate_covariance",
    "gate_direction",
    "load_covariance",
    "parse_captions",
    "save_covariance",
    "solve_gate",
]

#: λ of the gate direction's ridge, u = (C + λ·mean(diag C)·I)⁻¹ i* (spec §1): C from a few
#: hundred captions has a tail of tiny eigenvalues.
RIDGE = 1e-4


def parse_captions(text: str) -> list[str]:
    """The captions of a caption file: one a line; blank lines and ``#`` comments are skipped."""
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def default_captions() -> list[str]:
    """The caption list bundled with the runtime (320 varied captions)."""
    text = resources.files("perfusion_runtime").joinpath("data/captions.txt").read_text()
    return parse_captions(text)


#: Called after each batch of captions with (captions encoded so far, all captions).
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Covariance:
    """An input covariance C and what it was estimated from.

    ``matrix`` is float64 [d, d] on the CPU; ``captions`` and ``tokens`` count the captions and
    the non-padding tokens averaged over. ``text_encoder`` is the fingerprint of the text
    encoders that made it (:func:`~perfusion_runtime.text_encoder_fingerprint`), known once the
    covariance has been saved or loaded (:func:`save_covariance`, :func:`load_covariance`).
    """

    matrix: Tensor
    captions: int
    tokens: int
    text_encoder: str | None = None


@torch.no_grad()
def estimate_covariance(
    pipe: Any,
    captions: Sequence[str] | None = None,
    *,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> Covariance:
    """C = (1/N) Σ e eᵀ, uncentered, over the encodings of every non-padding token (start and
    end tokens included) of ``captions`` (default: :func:`default_captions`), encoded
    ``batch_size`` captions at a time exactly as the pipeline encodes prompts."""
    captions = list(default_captions() if captions is None else captions)
    if not captions or batch_size < 1:
        raise ValueError("estimating a covariance needs at least one caption and batch_size ≥ 1")
    total: Tensor | None = None
    count = 0
    for start in range(0, len(captions), batch_size):
        embeds, _, mask = encode_prompts(pipe, captions[start : start + batch_size])
        rows = embeds[mask.bool()].double()
        total = rows.T @ rows if total is None else total + rows.T @ rows
        count += rows.shape[0]
        if progress is not None:
            progress(min(start + batch_size, len(captions)), len(captions))
    assert total is not None
    return Covariance(total / count, len(captions), count)


def build_covariance(
    pipe: Any, captions: Sequence[str] | None = None, batch_size: int = 32
) -> Tensor:
    """C, float64 [d, d] on the CPU: :func:`estimate_covariance`'s matrix."""
    return estimate_covariance(pipe, captions, batch_size=batch_size).matrix


def covariance_factor(covariance: Tensor) -> Tensor:
    """The Cholesky factor L (float64, CPU) of C plus a small ridge (``RIDGE`` × mean diagonal),
    so that each u = C⁻¹ i* costs O(d²) (:func:`solve_gate`); INVALID_COVARIANCE unless C is
    positive semi-definite."""
    c = covariance.double().cpu()
    ridge = RIDGE * torch.diagonal(c).mean()
    factor, info = torch.linalg.cholesky_ex(c + ridge * torch.eye(c.shape[0], dtype=torch.float64))
    if info != 0 or not ridge > 0:
        raise PerfusionRuntimeError(
            RuntimeErrorCode.INVALID_COVARIANCE, "C is not positive semi-definite"
        )
    return factor


def solve_gate(factor: Tensor, target_input: Tensor) -> Tensor:
    """u = C⁻¹ i* (float32) from :func:`covariance_factor`'s L."""
    return torch.cholesky_solve(target_input.double().cpu()[:, None], factor)[:, 0].float()


def gate_direction(covariance: Tensor, target_input: Tensor) -> Tensor:
    """The gate direction u = (C + λ·mean(diag C)·I)⁻¹ i*, λ = ``RIDGE`` (10⁻⁴), solved in
    float64 by Cholesky (spec/concept-format.md §1: the ridge keeps a C estimated from finitely
    many prompts invertible, and i*ᵀu > 0)."""
    return solve_gate(covariance_factor(covariance), target_input)


def check_covariance(covariance: Tensor, text_dim: int) -> Tensor:
    """``covariance`` as float64 on the CPU; INVALID_COVARIANCE unless it is a finite,
    symmetric [text_dim, text_dim] matrix."""
    c = torch.as_tensor(covariance).double().cpu()
    if c.shape != (text_dim, text_dim) or not torch.isfinite(c).all():
        raise PerfusionRuntimeError(
            RuntimeErrorCode.INVALID_COVARIANCE,
            f"expected a finite [{text_dim}, {text_dim}] matrix, got {list(c.shape)}",
        )
    if not torch.allclose(c, c.T, rtol=1e-5, atol=1e-8 * float(c.abs().max())):
        raise PerfusionRuntimeError(RuntimeErrorCode.INVALID_COVARIANCE, "C is not symmetric")
    return c


# --------------------------------------------------------------------------------------------
# Covariance files
# --------------------------------------------------------------------------------------------

COVARIANCE_FORMAT = "perfusion-covariance"
COVARIANCE_VERSION = "1.0"
_TENSOR = "covariance"
_FORMAT, _VERSION = "perfusion.format", "perfusion.version"
_CAPTIONS, _TOKENS = "perfusion.captions", "perfusion.tokens"
_FINGERPRINT = "perfusion.text_encoder_fingerprint"
_COUNT = re.compile(r"[1-9][0-9]{0,15}")


def _invalid(path: str | os.PathLike[str], message: str) -> PerfusionRuntimeError:
    return PerfusionRuntimeError(
        RuntimeErrorCode.INVALID_COVARIANCE, f"{os.fspath(path)}: {message}"
    )


def _check_pipeline(covariance: Covariance, pipe: Any, fingerprint: str) -> None:
    """COVARIANCE_MISMATCH unless ``covariance`` has ``pipe``'s width and text encoders."""
    text_dim = pipeline_layout(pipe).text_dim
    if covariance.matrix.shape[0] != text_dim:
        raise PerfusionRuntimeError(
            RuntimeErrorCode.COVARIANCE_MISMATCH,
            f"the covariance is {covariance.matrix.shape[0]}-dimensional; this pipeline's text "
            f"encodings are {text_dim}-dimensional",
        )
    if covariance.text_encoder not in (None, fingerprint):
        raise PerfusionRuntimeError(
            RuntimeErrorCode.COVARIANCE_MISMATCH,
            f"the covariance was made with text encoders {covariance.text_encoder[:19]}…, "
            f"this pipeline's are {fingerprint[:19]}…",
        )


def save_covariance(path: str | os.PathLike[str], covariance: Covariance, pipe: Any) -> Covariance:
    """Write ``covariance`` (estimated with ``pipe``) to ``path`` atomically, with ``pipe``'s
    text encoder fingerprint; return it with that fingerprint. COVARIANCE_MISMATCH if it has
    another width than ``pipe``'s encodings, or carries another fingerprint; INVALID_COVARIANCE
    if it is not symmetric."""
    fingerprint = text_encoder_fingerprint(pipe)
    _check_pipeline(covariance, pipe, fingerprint)
    matrix = check_covariance(covariance.matrix, covariance.matrix.shape[0])
    metadata = {
        _FORMAT: COVARIANCE_FORMAT,
        _VERSION: COVARIANCE_VERSION,
        _CAPTIONS: str(covariance.captions),
        _TOKENS: str(covariance.tokens),
        _FINGERPRINT: fingerprint,
    }
    tensors = {_TENSOR: matrix.float().contiguous()}
    write_atomic(path, safetensors.torch.save(tensors, metadata=metadata))
    return dataclasses.replace(covariance, text_encoder=fingerprint)


def load_covariance(path: str | os.PathLike[str], pipe: Any = None) -> Covariance:
    """Read a covariance file (float64 matrix). With ``pipe``, refuse one made for other text
    encoders or another text width (COVARIANCE_MISMATCH). INVALID_COVARIANCE if the file is not
    a covariance file; ``OSError`` if it cannot be read."""
    try:
        with safetensors.safe_open(os.fspath(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            names = set(handle.keys())
            matrix = handle.get_tensor(_TENSOR) if names == {_TENSOR} else None
    except safetensors.SafetensorError as error:
        raise _invalid(path, f"not a safetensors file ({error})") from None
    if metadata.get(_FORMAT) != COVARIANCE_FORMAT:
        raise _invalid(path, f"{_FORMAT} is not {COVARIANCE_FORMAT!r}: not a covariance file")
    if metadata.get(_VERSION, "").split(".")[0] != COVARIANCE_VERSION.split(".")[0]:
        raise _invalid(path, f"unsupported {_VERSION} {metadata.get(_VERSION)!r}")
    if matrix is None or matrix.ndim != 2 or not matrix.is_floating_point():
        raise _invalid(path, f"expected one float tensor {_TENSOR!r} [d, d], found {sorted(names)}")
    counts = [metadata.get(key, "") for key in (_CAPTIONS, _TOKENS)]
    fingerprint = metadata.get(_FINGERPRINT, "")
    if not all(_COUNT.fullmatch(count) for count in counts) or not is_digest(fingerprint):
        raise _invalid(path, f"{_CAPTIONS}, {_TOKENS} or {_FINGERPRINT} is missing or malformed")
    covariance = Covariance(
        check_covariance(matrix, matrix.shape[0]), int(counts[0]), int(counts[1]), fingerprint
    )
    if pipe is not None:
        _check_pipeline(covariance, pipe, text_encoder_fingerprint(pipe))
    return covariance
