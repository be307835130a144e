"""perfusion_runtime — apply Perfusion concepts to local diffusers pipelines (GPU or CPU).

    >>> import perfusion_runtime as pr
    >>> handle = pr.apply(pipe, ["teddy.perfusion.safetensors", "teapot.perfusion.safetensors"])
    >>> image = pipe("a <teddy> sailing in a <teapot>").images[0]
    >>> handle.set_gate("<teddy>", beta=0.6)   # per concept, from the next call on
    >>> handle.remove()                        # the pipeline is exactly as before
    >>> concept = pr.train(pipe, "photos/", pr.TrainingConfig(token="<dog>", superclass="dog"))

The edit itself (:mod:`perfusion_runtime.edit`) is plain torch, for tools with their own model
code; :func:`patch_cross_attention` patches any module tree of diffusers ``Attention`` layers.
:func:`estimate_covariance` / :func:`save_covariance` / :func:`load_covariance` keep a text
encoder's input covariance in a file (:mod:`perfusion_runtime.covariance`), and
:func:`new_concept` makes a concept initialised as the paper does;
:func:`import_checkpoint` converts perfusion-pytorch and ChenDarYen checkpoints
(:mod:`perfusion_runtime.importers`).
"""

from .covariance import (
    Covariance,
    build_covariance,
    default_captions,
    estimate_covariance,
    load_covariance,
    parse_captions,
    save_covariance,
)
from .edit import ConceptSet, ConceptVectors, LayerEdit
from .errors import ErrorCategory, PerfusionRuntimeError, RuntimeErrorCode
from .importers import import_checkpoint
from .initial_concept import new_concept
from .pipeline import (
    PerfusionHandle,
    PipelineLayout,
    apply,
    load_concept,
    pipeline_fingerprint,
    pipeline_layout,
    text_encoder_fingerprint,
)
from .processor import PerfusionAttnProcessor, patch_cross_attention
from .prompts import encode_prompts
from .training import DEFAULT_TEMPLATES, TrainingConfig, TrainingProgress, train

__all__ = [
    "DEFAULT_TEMPLATES",
    "ConceptSet",
    "ConceptVectors",
    "Covariance",
    "ErrorCategory",
    "LayerEdit",
    "PerfusionAttnProcessor",
    "PerfusionHandle",
    "PerfusionRuntimeError",
    "PipelineLayout",
    "RuntimeErrorCode",
    "TrainingConfig",
    "TrainingProgress",
    "__version__",
    "apply",
    "build_covariance",
    "default_captions",
    "encode_prompts",
    "estimate_covariance",
    "import_checkpoint",
    "load_concept",
    "load_covariance",
    "new_concept",
    "parse_captions",
    "patch_cross_attention",
    "pipeline_fingerprint",
    "pipeline_layout",
    "save_covariance",
    "text_encoder_fingerprint",
    "train",
]

__version__ = "0.1.0"
