"""Covariance files: the input covariance C of a text encoder, estimated once and kept.

C (paper §3; :func:`~perfusion_runtime.estimate_covariance`) is shared by every concept and layer
of one text encoder, and costs a pass of the text encoder over a caption corpus, so training and
the exact multi-concept composition read it from a file (``pfx covariance`` writes one).

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
from typing import Any

import safetensors
import safetensors.torch

from perfusion_format.files import write_atomic

from .concepts import Covariance, _check_covariance
from .errors import PerfusionRuntimeError, RuntimeErrorCode
from .pipeline import pipeline_layout, text_encoder_fingerprint

__all__ = ["COVARIANCE_FORMAT", "COVARIANCE_VERSION", "load_covariance", "save_covariance"]

COVARIANCE_FORMAT = "perfusion-covariance"
COVARIANCE_VERSION = "1.0"
_TENSOR = "covariance"
_FORMAT, _VERSION = "perfusion.format", "perfusion.version"
_CAPTIONS, _TOKENS = "perfusion.captions", "perfusion.tokens"
_FINGERPRINT = "perfusion.text_encoder_fingerprint"
_COUNT = re.compile(r"[1-9][0-9]{0,15}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


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
    matrix = _check_covariance(covariance.matrix, covariance.matrix.shape[0])
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
    if not all(_COUNT.fullmatch(count) for count in counts) or not _DIGEST.fullmatch(fingerprint):
        raise _invalid(path, f"{_CAPTIONS}, {_TOKENS} or {_FINGERPRINT} is missing or malformed")
    covariance = Covariance(
        _check_covariance(matrix, matrix.shape[0]), int(counts[0]), int(counts[1]), fingerprint
    )
    if pipe is not None:
        _check_pipeline(covariance, pipe, text_encoder_fingerprint(pipe))
    return covariance
