"""Checks and guards for diffusers features that meet applied concepts (issue 17, part 2).

``tests/runtime/test_compat.py`` found what goes wrong when concepts meet features users combine
them with; the pieces here are what :mod:`~perfusion_runtime.pipeline` calls to handle them
(``runtime/README.md``, "Works with"):

- :func:`check_components_free` — ``apply`` refuses (ALREADY_APPLIED) a pipeline whose UNet or
  text encoder already carries concepts through another pipeline object (an img2img sibling
  built from ``pipe.components``), instead of nesting a second edit around the first.
- :func:`guard` / :func:`unguard` — while concepts are applied, the pipeline's
  ``load_textual_inversion``, ``load_ip_adapter`` and ``unload_ip_adapter`` refuse
  (ALREADY_APPLIED) before changing anything, and ``set_ip_adapter_scale`` reaches the
  IP-Adapter processors the runtime's processors wrap.
- :func:`unwrap_compiled` — the module a ``torch.compile``'d UNet wraps, whose module paths
  are the family's (``pipeline_layout`` and the fingerprint read it).
- :func:`materialized_weight` — a weight that accelerate's sequential offload keeps off the
  module (on the meta device), read from the offload hook's weights map.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any

from torch import Tensor, nn

from .errors import PerfusionRuntimeError, RuntimeErrorCode
from .processor import PerfusionAttnProcessor
from .tokens import ConceptEmbedding

__all__ = [
    "GUARDED_LOADERS",
    "check_components_free",
    "guard",
    "materialized_weight",
    "unguard",
    "unwrap_compiled",
    "unwrapped_processors",
]

#: Pipeline methods that change the tokenizer, the text encoder's embedding table or the UNet's
#: attention processors in ways the applied concepts cannot follow: refused while applied.
GUARDED_LOADERS = ("load_textual_inversion", "load_ip_adapter", "unload_ip_adapter")
_ROUTED = ("set_ip_adapter_scale",)
_TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


def unwrap_compiled(module: nn.Module) -> nn.Module:
    """The module ``torch.compile`` wrapped (``OptimizedModule._orig_mod``), else ``module``."""
    return getattr(module, "_orig_mod", module)


def check_components_free(pipe: Any) -> None:
    """Refuse (ALREADY_APPLIED) a pipeline whose UNet or text encoders already carry concepts
    applied through another pipeline object that shares them."""
    unet = getattr(pipe, "unet", None)
    if unet is not None and any(
        isinstance(processor, PerfusionAttnProcessor)
        for processor in unwrap_compiled(unet).attn_processors.values()
    ):
        raise PerfusionRuntimeError(
            RuntimeErrorCode.ALREADY_APPLIED,
            "this pipeline's UNet already has concepts applied through another pipeline that "
            "shares it (a sibling built from pipe.components): remove them there first",
        )
    for name in _TEXT_ENCODERS:
        encoder = getattr(pipe, name, None)
        if encoder is not None and isinstance(encoder.get_input_embeddings(), ConceptEmbedding):
            raise PerfusionRuntimeError(
                RuntimeErrorCode.ALREADY_APPLIED,
                f"this pipeline's {name} already has concepts applied through another pipeline "
                "that shares it (a sibling built from pipe.components): remove them there first",
            )


@contextmanager
def unwrapped_processors(unet: nn.Module) -> Iterator[None]:
    """Within the block, every attention layer shows the processor the runtime's processor
    wraps (diffusers' helpers look for their own processor classes); the same runtime
    processors are back afterwards. Processors replaced within the block are not kept."""
    unet = unwrap_compiled(unet)
    ours = {
        name: processor
        for name, processor in unet.attn_processors.items()
        if isinstance(processor, PerfusionAttnProcessor)
    }
    current = dict(unet.attn_processors)
    unet.set_attn_processor({**current, **{n: p.inner for n, p in ours.items()}})
    try:
        yield
    finally:
        unet.set_attn_processor({**dict(unet.attn_processors), **ours})


def _refusing(name: str) -> Callable[..., Any]:
    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise PerfusionRuntimeError(
            RuntimeErrorCode.ALREADY_APPLIED,
            f"{name} cannot change a pipeline that has concepts applied: remove them, call "
            f"{name}, then apply them again",
        )

    return refuse


def _routed(pipe: Any, method: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        with unwrapped_processors(pipe.unet):
            return method(*args, **kwargs)

    return call


def guard(pipe: Any) -> None:
    """Install the guards on ``pipe`` (instance attributes; :func:`unguard` takes them off):
    :data:`GUARDED_LOADERS` refuse with ALREADY_APPLIED before changing anything, and
    ``set_ip_adapter_scale`` reaches the IP-Adapter processors under the runtime's."""
    for name in GUARDED_LOADERS:
        if hasattr(pipe, name):
            pipe.__dict__[name] = _refusing(name)
    for name in _ROUTED:
        if hasattr(pipe, name):
            pipe.__dict__[name] = _routed(pipe, getattr(pipe, name))


def unguard(pipe: Any) -> None:
    """Take :func:`guard`'s wrappers off ``pipe`` (idempotent)."""
    for name in (*GUARDED_LOADERS, *_ROUTED):
        pipe.__dict__.pop(name, None)


def materialized_weight(module: nn.Module) -> Tensor:
    """``module.weight``; when accelerate's sequential offload keeps it on the meta device, the
    offloaded copy from the module's hook's weights map (CPU or disk)."""
    weight = module.weight
    if weight.device.type != "meta":
        return weight
    hook = getattr(module, "_hf_hook", None)
    hooks = [hook, *getattr(hook, "hooks", ())]
    for candidate in hooks:
        weights_map = getattr(candidate, "weights_map", None)
        if weights_map is not None and "weight" in weights_map:
            return weights_map["weight"]
    raise PerfusionRuntimeError(
        RuntimeErrorCode.UNSUPPORTED_PIPELINE,
        "the UNet's cross-attention weights are on the meta device and no offload hook holds "
        "them: apply concepts before offloading the pipeline",
    )
