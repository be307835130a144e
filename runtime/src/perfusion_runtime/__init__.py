"""perfusion_runtime — apply Perfusion concepts to local diffusers pipelines (GPU or CPU).

    >>> import perfusion_runtime as pr
    >>> handle = pr.apply(pipe, ["teddy.perfusion.safetensors", "teapot.perfusion.safetensors"])
    >>> image = pipe("a <teddy> sailing in a <teapot>").images[0]
    >>> handle.set_gate("<teddy>", beta=0.6)   # per concept, from the next call on
    >>> handle.remove()                        # the pipeline is exactly as before
    >>> concept = pr.train(pipe, "photos/", pr.TrainingConfig(token="<dog>", superclass="dog"))

    >>> pr.applied(pipe)                       # the handle, for tools that did not keep it
    >>> pr.unload(pipe)                        # remove whatever is applied

Tools with their own model code (ComfyUI, A1111, research UNets) use :func:`build_edits` — the
per-layer edits of a set of concepts, named the diffusers or the LDM way
(:mod:`perfusion_runtime.layer_names`) — and :func:`patch_cross_attention`, which puts them into
any module with ``to_k``/``to_v`` Linears; the edit itself (:mod:`perfusion_runtime.edit`) is
plain torch. ``patch.observe()`` / ``handle.observe()`` record the edited K and V.
:func:`estimate_covariance` / :func:`save_covariance` / :func:`load_covariance` keep a text
encoder's input covariance in a file (:mod:`perfusion_runtime.covariance`), and
:func:`new_concept` makes a concept initialised as the paper does;
:func:`import_checkpoint` converts perfusion-pytorch and ChenDarYen checkpoints
(:mod:`perfusion_runtime.importers`).
"""

from .concept_edits import ConceptEdits, ConceptSource, build_edits, load_concept
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
from .layer_names import diffusers_to_ldm, ldm_to_diffusers
from .pipeline import (
    PerfusionHandle,
    PipelineLayout,
    applied,
    apply,
    pipeline_fingerprint,
    pipeline_layout,
    text_encoder_fingerprint,
    unload,
)
from .processor import (
    CrossAttentionPatch,
    EditedProjection,
    KVTrace,
    PerfusionAttnProcessor,
    patch_cross_attention,
)
from .prompts import encode_prompts
from .training import DEFAULT_TEMPLATES, TrainingConfig, TrainingProgress, train

__all__ = [
    "DEFAULT_TEMPLATES",
    "ConceptEdits",
    "ConceptSet",
    "ConceptSource",
    "ConceptVectors",
    "Covariance",
    "CrossAttentionPatch",
    "EditedProjection",
    "ErrorCategory",
    "KVTrace",
    "LayerEdit",
    "PerfusionAttnProcessor",
    "PerfusionHandle",
    "PerfusionRuntimeError",
    "PipelineLayout",
    "RuntimeErrorCode",
    "TrainingConfig",
    "TrainingProgress",
    "__version__",
    "applied",
    "apply",
    "build_covariance",
    "build_edits",
    "default_captions",
    "diffusers_to_ldm",
    "encode_prompts",
    "estimate_covariance",
    "import_checkpoint",
    "ldm_to_diffusers",
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
    "unload",
]

__version__ = "0.1.0"
