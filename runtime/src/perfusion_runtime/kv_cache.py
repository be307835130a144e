"""Reusing each cross-attention layer's edited keys and values across denoising steps.

The keys and values of a cross-attention layer depend only on the text encodings, the layer's
``to_k``/``to_v`` projections and the concepts' gates — not on the latents or the timestep. A
diffusers pipeline passes the same encodings tensor (prompt and negative prompt concatenated once
per call) to every step of one generation, so the edited K and V are computed at the first step
and reused for the others: the edit then costs nothing per step, and neither do the K and V
projections themselves.

What an entry is keyed by (every part must match, or the values are computed afresh):

* **the encodings**: the tensor's *identity* (a weak reference to it, or to the tensor it is a
  view of, so the sliced text states of an IP-adapter processor match too) and its view geometry
  (storage offset, shape, strides), dtype, device and *version counter* (``tensor._version``,
  which every in-place write through the tensor or any view of it increments). A new prompt, new
  ``prompt_embeds`` or a new pipeline call gives a new tensor; writing into the same tensor in
  place moves its version. The entry never keeps the encodings alive: when they are freed (the
  end of a generation) the entry is dropped with them, so the cache holds memory only while its
  encodings exist.
* **the projection**: the ``to_k``/``to_v`` module's identity, and the identity, data pointer,
  version, dtype, device and shape of every parameter its output depends on. ``load_state_dict``
  and other in-place writes move the version; ``.to(dtype/device)`` moves data pointer and dtype;
  replacing the module (``load_lora_weights`` wraps it, ``unload_lora_weights`` unwraps it)
  changes its identity. Only projections whose output is known to be a function of exactly that
  state are cached: a plain ``torch.nn.Linear`` without hooks, or PEFT's LoRA ``Linear`` (plain
  LoRA, no variant such as DoRA) over one. For LoRA, the key also holds every active adapter's
  scale (``set_adapters`` weights, ``cross_attention_kwargs={"scale": …}``, which diffusers
  applies by changing the scales for the length of the UNet call), which adapters are active,
  disabled or merged (``fuse_lora``/``unfuse_lora`` change the merged list) and whether a LoRA
  dropout is live. Anything else — other wrappers, forward hooks (accelerate's sequential offload
  replaces ``forward``), global module hooks, a non-identity dropout in training mode — is not
  verifiable and is computed every call, as without the cache.
* **the edit**: the concept set's version, which :meth:`~perfusion_runtime.edit.ConceptSet.
  set_gate` (``handle.set_gate``) and ``set_vectors`` increment. Value and key targets of an
  inference edit are immutable; an edit whose targets require grad (training) is never cached.
* **the mode**: autocast on/off and its dtype for the device, and inference mode. With autograd
  on (training, or guidance through the UNet) nothing is cached or served.

And the cached output itself is returned only while its own version counter is unchanged, so an
attention processor that wrote into the K or V it was given gets fresh ones next time.

What it cannot see: writes that bypass PyTorch's version counters (``tensor.data.copy_(…)``,
writing through a NumPy array that shares the memory) into encodings or weights that keep their
identity. Nothing in diffusers or PEFT does that to weights without also changing a keyed state
(PEFT's merge writes ``weight.data`` and updates its merged list); call :meth:`KVCache.clear` (or
``handle.clear_cache()``) after doing it by hand, or apply with ``kv_cache=False``.

One entry per slot (``k``, ``v``) per layer: memory is bounded by the last generation's K and V,
2·B·T·Σ m_ℓ elements (SD 1.5, batch 2 with classifier-free guidance, fp32: 7.7 MB).
Under ``torch.compile`` tracing the cache steps aside (the compiled graph computes K and V).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _torch_module

__all__ = ["KVCache", "projection_state", "tensor_state"]

#: (objects whose identity must match, plain values that must be equal)
State = tuple[tuple[object, ...], tuple[Hashable, ...]]


def tensor_state(tensor: Tensor) -> State:
    """The identity (of the tensor, or the tensor it views) and the version, geometry, dtype and
    device of ``tensor``."""
    base = tensor._base if tensor._base is not None else tensor
    signature = (
        tensor.storage_offset(),
        tuple(tensor.shape),
        tensor.stride(),
        tensor.dtype,
        tensor.device,
        tensor._version,
    )
    return (base,), signature


def _parameters_state(parameters: list[Tensor]) -> State:
    signature = tuple(
        (p.data_ptr(), p._version, p.dtype, p.device, tuple(p.shape)) for p in parameters
    )
    return tuple(parameters), signature


def _plain_linear(module: nn.Module) -> bool:
    """An ``nn.Linear`` (exactly) with no hooks and its own ``forward``."""
    return (
        type(module) is nn.Linear
        and not module._forward_hooks
        and not module._forward_pre_hooks
        and "forward" not in module.__dict__
    )


def _linear_parameters(module: nn.Linear) -> list[Tensor]:
    return [module.weight] if module.bias is None else [module.weight, module.bias]


def _is_peft_lora_linear(module: nn.Module) -> bool:
    kind = type(module)
    return kind.__name__ == "Linear" and kind.__module__ == "peft.tuners.lora.layer"


def _live_dropout(module: nn.Module) -> bool:
    return isinstance(module, nn.Dropout) and module.training and module.p > 0


def _lora_state(module: Any) -> State | None:
    """PEFT's LoRA ``Linear``: base weights, the active adapters' weights and scales, and which
    adapters are active, disabled or merged; None for anything this does not cover."""
    base = module.base_layer
    if (
        not _plain_linear(base)
        or module._forward_hooks
        or module._forward_pre_hooks
        or "forward" in module.__dict__
        or getattr(module, "lora_variant", None)
        or getattr(module, "fan_in_fan_out", False)
    ):
        return None
    parameters = _linear_parameters(base)
    adapters = tuple(module.active_adapters)
    scales = []
    for name in adapters:
        if name not in module.lora_A:
            continue
        a, b = module.lora_A[name], module.lora_B[name]
        if not (_plain_linear(a) and _plain_linear(b)) or _live_dropout(module.lora_dropout[name]):
            return None
        parameters += [*_linear_parameters(a), *_linear_parameters(b)]
        scales.append(float(module.scaling[name]))
    objects, signature = _parameters_state(parameters)
    flags = (
        bool(module.disable_adapters),
        adapters,
        tuple(module.merged_adapters),
        tuple(scales),
    )
    return (module, *objects), (*signature, flags)


def projection_state(module: nn.Module) -> State | None:
    """What the output of the projection ``module`` depends on, or None when that cannot be
    verified (any module but a plain ``nn.Linear`` or a plain PEFT LoRA ``Linear``, or hooks)."""
    if _torch_module._global_forward_hooks or _torch_module._global_forward_pre_hooks:
        return None
    if _plain_linear(module):
        objects, signature = _parameters_state(_linear_parameters(module))  # type: ignore[arg-type]
        return (module, *objects), signature
    if _is_peft_lora_linear(module):
        return _lora_state(module)
    return None


def _mode(device: torch.device) -> tuple[Hashable, ...]:
    try:
        autocast = torch.is_autocast_enabled(device.type)
    except RuntimeError:  # a device type autocast does not know
        autocast = False
    dtype = torch.get_autocast_dtype(device.type) if autocast else None
    return autocast, dtype, torch.is_inference_mode_enabled()


@dataclass
class _Entry:
    references: tuple[weakref.ref[Any], ...]
    signature: tuple[Hashable, ...]
    output: Tensor
    output_version: int

    def matches(self, objects: tuple[object, ...], signature: tuple[Hashable, ...]) -> bool:
        return (
            len(objects) == len(self.references)
            and all(ref() is obj for ref, obj in zip(self.references, objects, strict=True))
            and signature == self.signature
            and self.output._version == self.output_version
        )


class KVCache:
    """One layer's last keys and values (one entry per slot), served while nothing they depend
    on has changed; see the module docstring for the key.

    ``hits`` and ``misses`` count lookups (a call that could not be verified counts as neither).
    """

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Drop every entry."""
        self._entries.clear()

    def _drop(self, slot: str, reference: weakref.ref[Any]) -> None:
        entry = self._entries.get(slot)
        if entry is not None and entry.references[0] is reference:
            del self._entries[slot]

    def get(
        self,
        slot: str,
        encodings: Tensor,
        projection: nn.Module,
        edit_version: Hashable,
        compute: Callable[[], Tensor],
    ) -> Tensor:
        """``compute()``'s result for ``slot``, from the cache when the encodings, the
        projection's state, ``edit_version`` and the mode all match the entry's."""
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return compute()
        projected = projection_state(projection)
        if projected is None:
            self._entries.pop(slot, None)
            return compute()
        source, source_signature = tensor_state(encodings)
        objects = (*source, *projected[0])
        signature = (
            source_signature,
            projected[1],
            edit_version,
            _mode(encodings.device),
        )
        entry = self._entries.get(slot)
        if entry is not None and entry.matches(objects, signature):
            self.hits += 1
            return entry.output
        self.misses += 1
        self._entries.pop(slot, None)
        output = compute()
        first = weakref.ref(objects[0], lambda ref, slot=slot: self._drop(slot, ref))
        references = (first, *(weakref.ref(obj) for obj in objects[1:]))
        self._entries[slot] = _Entry(references, signature, output, output._version)
        return output
