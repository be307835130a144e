"""Errors raised by perfusion_runtime, each with a stable code and the category of that code.

They subclass :class:`perfusion_format.PerfusionError`, so one ``except`` catches a bad file and a
concept that does not fit the pipeline alike; ``error.code`` tells them apart, and
``error.category`` (:class:`ErrorCategory`) says what has to change — for callers that sort
failures, such as the CLI's exit codes.
"""

from __future__ import annotations

from enum import StrEnum

from perfusion_format import PerfusionError

__all__ = ["ErrorCategory", "PerfusionRuntimeError", "RuntimeErrorCode"]


class ErrorCategory(StrEnum):
    """What a :class:`RuntimeErrorCode` is about, and so what has to change to succeed."""

    INPUT = "input"
    """The inputs of a training run: its image folder, images, masks, settings, or the
    checkpoint to resume from."""

    DATA = "data"
    """What is applied to or imported for the model — a concept, a covariance, a checkpoint to
    import — is invalid or unsafe, or was made for another model."""

    MODEL = "model"
    """The model cannot do what was asked: it is not a pipeline the runtime supports, its
    tokenizer splits the superclass word, training diverged on it, or an import needs it."""

    CALL = "call"
    """A call out of order or with an argument no model or file can make right: concepts
    applied twice, a token no applied concept has, a gate that is not finite."""


class RuntimeErrorCode(StrEnum):
    """Stable codes for a concept that cannot be applied, or a bad runtime argument; each code
    has an :class:`ErrorCategory` (``code.category``)."""

    category: ErrorCategory

    def __new__(cls, value: str, category: ErrorCategory) -> RuntimeErrorCode:
        code = str.__new__(cls, value)
        code._value_ = value
        code.category = category
        return code

    FAMILY_MISMATCH = "FAMILY_MISMATCH", ErrorCategory.DATA
    """The concept is for another base family than the pipeline (e.g. an sdxl concept on SD 1.5)."""

    LAYER_MISMATCH = "LAYER_MISMATCH", ErrorCategory.DATA
    """A custom-family concept's layers or text width differ from the pipeline's."""

    BASE_MISMATCH = "BASE_MISMATCH", ErrorCategory.DATA
    """The concept was made for other base weights (allow_base_mismatch=True applies it anyway)."""

    DUPLICATE_TOKEN = "DUPLICATE_TOKEN", ErrorCategory.DATA
    """Two concepts share a trigger token, or the token is already in the tokenizer's vocabulary."""

    ALREADY_APPLIED = "ALREADY_APPLIED", ErrorCategory.CALL
    """The pipeline already has concepts applied: remove them first, or apply all in one call."""

    UNSUPPORTED_PIPELINE = "UNSUPPORTED_PIPELINE", ErrorCategory.MODEL
    """The pipeline has no UNet cross-attention or no CLIP text encoder this runtime understands."""

    GLOBAL_LOCKING_NEEDS_PROMPT = "GLOBAL_LOCKING_NEEDS_PROMPT", ErrorCategory.CALL
    """Global locking derives the keys' superclass prompt from the prompt text: a call that passes
    ``prompt_embeds`` without a prompt cannot be served (apply without global locking instead)."""

    UNKNOWN_CONCEPT = "UNKNOWN_CONCEPT", ErrorCategory.CALL
    """``set_gate`` named a token that no applied concept has."""

    INVALID_GATE = "INVALID_GATE", ErrorCategory.CALL
    """β must be finite and τ finite and positive."""

    SUPERCLASS_NOT_ONE_TOKEN = "SUPERCLASS_NOT_ONE_TOKEN", ErrorCategory.MODEL
    """The superclass word is not a single token of the tokenizer."""

    INVALID_COVARIANCE = "INVALID_COVARIANCE", ErrorCategory.DATA
    """The covariance is not a finite symmetric positive definite [d, d] matrix for this
    pipeline, or a covariance file is not one (container, tensor or metadata)."""

    NO_IMAGES = "NO_IMAGES", ErrorCategory.INPUT
    """Training: the image folder is missing or holds no PNG, JPEG or WebP file."""

    INVALID_IMAGE = "INVALID_IMAGE", ErrorCategory.INPUT
    """Training: an image or mask cannot be read, or an image's shorter side is under a quarter
    of the training resolution."""

    MASK_MISMATCH = "MASK_MISMATCH", ErrorCategory.INPUT
    """Training: the masks do not match the images one to one by file stem, a mask's size
    differs from its image's, or a mask is all black."""

    INVALID_TRAINING_CONFIG = "INVALID_TRAINING_CONFIG", ErrorCategory.INPUT
    """Training: a setting is out of range (steps, batch, learning rates, resolution, a template
    without exactly one ``{}``, a mixed precision the device cannot run, …)."""

    TRAINING_DIVERGED = "TRAINING_DIVERGED", ErrorCategory.MODEL
    """Training: the trainable tensors stopped being finite (learning rates too high)."""

    INVALID_CHECKPOINT = "INVALID_CHECKPOINT", ErrorCategory.INPUT
    """Training: the checkpoint to resume from cannot be read, or was made with other settings,
    images or base weights."""

    COVARIANCE_MISMATCH = "COVARIANCE_MISMATCH", ErrorCategory.DATA
    """A covariance file was made with other text encoders than the pipeline's (their
    fingerprint differs), or is of another size than the pipeline's text width."""

    IMPORT_UNSAFE = "IMPORT_UNSAFE", ErrorCategory.DATA
    """A checkpoint to import needs more than torch's weights-only loader allows (a pickled class
    or function, an unsupported pickle opcode): it is refused without being unpickled."""

    IMPORT_INVALID = "IMPORT_INVALID", ErrorCategory.DATA
    """A checkpoint to import is not a torch file in either public Perfusion layout, or holds
    what a v1 concept cannot carry (several vectors per token, inconsistent tensors)."""

    IMPORT_NEEDS_MODEL = "IMPORT_NEEDS_MODEL", ErrorCategory.MODEL
    """An import needs the base model: for the base fingerprint (unless one is given), or for the
    layer table of the ``custom`` family."""


class PerfusionRuntimeError(PerfusionError):
    """A concept that cannot be applied to this pipeline, or a bad runtime argument."""

    code: RuntimeErrorCode

    @property
    def category(self) -> ErrorCategory:
        """What the error is about (:class:`ErrorCategory`), from its code."""
        return self.code.category
