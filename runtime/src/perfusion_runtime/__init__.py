"""perfusion_runtime — apply Perfusion concepts to local diffusers pipelines (GPU or CPU).

    >>> import perfusion_runtime as pr
    >>> handle = pr.apply(pipe, ["teddy.perfusion.safetensors", "teapot.perfusion.safetensors"])
    >>> image = pipe("a <teddy> sailing in a <teapot>").images[0]
    >>> handle.set_gate("<teddy>", beta=0.6)   # per concept, from the next call on
    >>> handle.remove()                        # the pipeline is exactly as before

The edit itself (:mod:`perfusion_runtime.edit`) is plain torch, for tools with their own model
code; :func:`patch_cross_attention` patches any module tree of diffusers ``Attention`` layers.
"""

from .concepts import build_covariance, default_captions, encode_prompts, new_concept
from .edit import ConceptSet, ConceptVectors, LayerEdit
from .errors import PerfusionRuntimeError, RuntimeErrorCode
from .pipeline import (
    PerfusionHandle,
    PipelineLayout,
    apply,
    load_concept,
    pipeline_fingerprint,
    pipeline_layout,
)
from .processor import PerfusionAttnProcessor, patch_cross_attention

__all__ = [
    "ConceptSet",
    "ConceptVectors",
    "LayerEdit",
    "PerfusionAttnProcessor",
    "PerfusionHandle",
    "PerfusionRuntimeError",
    "PipelineLayout",
    "RuntimeErrorCode",
    "__version__",
    "apply",
    "build_covariance",
    "default_captions",
    "encode_prompts",
    "load_concept",
    "new_concept",
    "patch_cross_attention",
    "pipeline_fingerprint",
    "pipeline_layout",
]

__version__ = "0.1.0"
