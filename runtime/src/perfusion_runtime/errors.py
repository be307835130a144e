"""Errors raised by perfusion_runtime, each with a stable code.

They subclass :class:`perfusion_format.PerfusionError`, so one ``except`` catches a bad file and a
concept that does not fit the pipeline alike; ``error.code`` tells them apart.
"""

from __future__ import annotations

from enum import StrEnum

from perfusion_format import PerfusionError


class RuntimeErrorCode(StrEnum):
    """Stable codes for a concept that cannot be applied, or a bad runtime argument."""

    FAMILY_MISMATCH = "FAMILY_MISMATCH"
    """The concept is for another base family than the pipeline (e.g. an sdxl concept on SD 1.5)."""

    LAYER_MISMATCH = "LAYER_MISMATCH"
    """A custom-family concept's layers or text width differ from the pipeline's."""

    BASE_MISMATCH = "BASE_MISMATCH"
    """The concept was made for other base weights (allow_base_mismatch=True applies it anyway)."""

    DUPLICATE_TOKEN = "DUPLICATE_TOKEN"
    """Two concepts share a trigger token, or the token is already in the tokenizer's vocabulary."""

    ALREADY_APPLIED = "ALREADY_APPLIED"
    """The pipeline already has concepts applied: remove them first, or apply all in one call."""

    UNSUPPORTED_PIPELINE = "UNSUPPORTED_PIPELINE"
    """The pipeline has no UNet cross-attention or no CLIP text encoder this runtime understands."""

    UNKNOWN_CONCEPT = "UNKNOWN_CONCEPT"
    """``set_gate`` named a token that no applied concept has."""

    INVALID_GATE = "INVALID_GATE"
    """β must be finite and τ finite and positive."""

    SUPERCLASS_NOT_ONE_TOKEN = "SUPERCLASS_NOT_ONE_TOKEN"
    """The superclass word is not a single token of the tokenizer."""

    INVALID_COVARIANCE = "INVALID_COVARIANCE"
    """The covariance is not a finite symmetric [d, d] matrix for this pipeline."""


class PerfusionRuntimeError(PerfusionError):
    """A concept that cannot be applied to this pipeline, or a bad runtime argument."""
