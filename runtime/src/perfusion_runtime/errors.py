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
    """The covariance is not a finite symmetric positive definite [d, d] matrix for this
    pipeline, or a covariance file is not one (container, tensor or metadata)."""

    NO_IMAGES = "NO_IMAGES"
    """Training: the image folder is missing or holds no PNG, JPEG or WebP file."""

    INVALID_IMAGE = "INVALID_IMAGE"
    """Training: an image or mask cannot be read, or an image's shorter side is under a quarter
    of the training resolution."""

    MASK_MISMATCH = "MASK_MISMATCH"
    """Training: the masks do not match the images one to one by file stem, a mask's size
    differs from its image's, or a mask is all black."""

    INVALID_TRAINING_CONFIG = "INVALID_TRAINING_CONFIG"
    """Training: a setting is out of range (steps, batch, learning rates, resolution, a template
    without exactly one ``{}``, a mixed precision the device cannot run, …)."""

    TRAINING_DIVERGED = "TRAINING_DIVERGED"
    """Training: the trainable tensors stopped being finite (learning rates too high)."""

    INVALID_CHECKPOINT = "INVALID_CHECKPOINT"
    """Training: the checkpoint to resume from cannot be read, or was made with other settings,
    images or base weights."""

    COVARIANCE_MISMATCH = "COVARIANCE_MISMATCH"
    """A covariance file was made with other text encoders than the pipeline's (their
    fingerprint differs), or is of another size than the pipeline's text width."""

    IMPORT_UNSAFE = "IMPORT_UNSAFE"
    """A checkpoint to import needs more than torch's weights-only loader allows (a pickled class
    or function, an unsupported pickle opcode): it is refused without being unpickled."""

    IMPORT_INVALID = "IMPORT_INVALID"
    """A checkpoint to import is not a torch file in either public Perfusion layout, or holds
    what a v1 concept cannot carry (several vectors per token, inconsistent tensors)."""

    IMPORT_NEEDS_MODEL = "IMPORT_NEEDS_MODEL"
    """An import needs the base model: for the base fingerprint (unless one is given), or for the
    layer table of the ``custom`` family."""


class PerfusionRuntimeError(PerfusionError):
    """A concept that cannot be applied to this pipeline, or a bad runtime argument."""
