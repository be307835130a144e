"""The gated rank-one edit on plain tensors — the functional core, with no diffusers in it.

For a token encoding e, concepts n = 1..N and a projection W (``to_k`` or ``to_v``), the paper's
equation with appendix B's composition of several concepts is

    sₙ(e) = eᵀuₙ / i*ₙᵀuₙ        gₙ(e) = σ((sₙ(e) − βₙ) / τₙ)
    W'e   = W (e − Σₙ sₙ i*ₙ) + Σₙ gₙ o*ₙ

Keys are locked to the superclass: o_k = W_k i_s, so by linearity the key edit happens in the
input space, ``K = W_k (e − Σ sₙ i*ₙ + Σ gₙ i_sₙ)``, and needs no per-layer storage; concepts that
carry explicit key targets add ``Σ gₙ o_kₙ`` after the projection instead. Values add the
learned ``Σ gₙ o_vₙ``. Projections are called, never read: a LoRA adapter on ``to_k``/``to_v``
still applies.
Scores and gates are computed in float32 whatever the model's dtype (under autocast too).

Training runs through this same code: the edit is differentiable in the encodings and in the
value targets (pass leaf tensors that require grad to :class:`LayerEdit`), and
:meth:`ConceptSet.set_vectors` moves i*, u and i_s between steps. With autograd off (inference)
and a contiguous ``to_v`` output, the value edit is one in-place ``addmm_`` on that output, in
the layer's dtype (float32, float16 or bfloat16: the gates and targets are cast once, so the
edit term is rounded as the layer's own output is); otherwise it is added out of place in
float32 and cast back.

Tools with their own attention code get a :class:`ConceptSet` and one :class:`LayerEdit` per
cross-attention layer from :func:`~perfusion_runtime.build_edits`, then either patch their modules
(:func:`~perfusion_runtime.patch_cross_attention`) or call ``edit.keys(e, to_k)`` and
``edit.values(e, to_v)`` where they would have called ``to_k(e)`` and ``to_v(e)``.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

import perfusion_format as pf

from .errors import PerfusionRuntimeError, RuntimeErrorCode

__all__ = ["ConceptSet", "ConceptVectors", "EditInputs", "LayerEdit", "check_gate"]

Projection = Callable[[Tensor], Tensor]


def _tensor(array: np.ndarray) -> Tensor:
    return torch.from_numpy(np.array(array, dtype=np.float32))


def check_gate(beta: float, tau: float) -> None:
    """Refuse a gate that would make σ((s − β)/τ) meaningless (INVALID_GATE)."""
    if not (math.isfinite(beta) and math.isfinite(tau) and tau > 0):
        raise PerfusionRuntimeError(
            RuntimeErrorCode.INVALID_GATE, f"β must be finite and τ > 0, got β={beta}, τ={tau}"
        )


@dataclass(frozen=True)
class ConceptVectors:
    """One concept's vectors as float32 tensors, with the gate it is applied with."""

    token: str
    target_input: Tensor
    gate_direction: Tensor
    superclass_input: Tensor | None
    key_targets: dict[str, Tensor] | None
    value_targets: dict[str, Tensor]
    beta: float
    tau: float

    @classmethod
    def from_concept(
        cls, concept: pf.Concept, beta: float | None = None, tau: float | None = None
    ) -> ConceptVectors:
        """Take a validated concept's vectors; β and τ default to the file's inference gate."""
        gate = concept.inference_gate
        beta = gate.beta if beta is None else beta
        tau = gate.tau if tau is None else tau
        check_gate(beta, tau)
        superclass = concept.superclass_input
        keys = concept.key_targets
        return cls(
            token=concept.token,
            target_input=_tensor(concept.target_input),
            gate_direction=_tensor(concept.gate_direction),
            superclass_input=None if superclass is None else _tensor(superclass),
            key_targets=None if keys is None else {p: _tensor(v) for p, v in keys.items()},
            value_targets={path: _tensor(v) for path, v in concept.value_targets.items()},
            beta=beta,
            tau=tau,
        )


@dataclass(frozen=True)
class EditInputs:
    """What every layer's edit needs from one batch of encodings [..., d], computed once.

    ``scores`` s and ``gates`` g are [..., N] float32; ``value_inputs`` = e − Σ sₙ i*ₙ and
    ``key_inputs`` = e − Σ sₙ i*ₙ + Σ gₙ i_sₙ (key-locked concepts) are in the encodings' dtype,
    ready for the layer's ``to_v`` and ``to_k``.
    """

    scores: Tensor
    gates: Tensor
    value_inputs: Tensor
    key_inputs: Tensor
    _flat_gates: dict[torch.dtype, Tensor] = field(default_factory=dict, repr=False, compare=False)

    def flat_gates(self, dtype: torch.dtype) -> Tensor:
        """The gates as [rows, N] in ``dtype``, cast once per dtype (every layer reuses it)."""
        flat = self._flat_gates.get(dtype)
        if flat is None:
            flat = self.gates.reshape(-1, self.gates.shape[-1]).to(dtype)
            self._flat_gates[dtype] = flat
        return flat


def _without_autocast(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """Autocast off for ``device`` where it is on, so scores and gates stay float32."""
    try:
        enabled = torch.is_autocast_enabled(device.type)
    except RuntimeError:  # a device type autocast does not know (meta)
        enabled = False
    return torch.autocast(device.type, enabled=False) if enabled else contextlib.nullcontext()


class _DeviceCache:
    """Copies of a set of tensors per (device, dtype), made on first use.

    A tensor already on the device (in the dtype) is its own copy, so trainable leaves stay live;
    converted copies of tensors that require grad are made afresh on every call, never kept
    stale.
    """

    def __init__(self, tensors: dict[str, Tensor]) -> None:
        self.master = tensors
        self._copies: dict[tuple[torch.device, torch.dtype | None], dict[str, Tensor]] = {}

    def on(self, device: torch.device, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        """The tensors on ``device``, in ``dtype`` (None: their own)."""
        copy = self._copies.get((device, dtype))
        if copy is None:
            copy = {name: tensor.to(device, dtype) for name, tensor in self.master.items()}
            if not any(tensor.requires_grad for tensor in self.master.values()):
                self._copies[(device, dtype)] = copy
        return copy


class ConceptSet:
    """N concepts stacked for the edit; shared by every layer's :class:`LayerEdit`.

    Holds, as [N, d] float32: i* (``targets``), uₙ / (i*ₙᵀuₙ) (``directions``, so that
    s = e · directions), and i_s (``key_inputs``, zero for concepts with explicit key targets);
    and the gate parameters β, τ [N], which :meth:`set_gate` changes between calls.
    """

    def __init__(self, concepts: Sequence[ConceptVectors]) -> None:
        if not concepts:
            raise ValueError("a ConceptSet needs at least one concept")
        self.tokens = tuple(concept.token for concept in concepts)
        self._concepts = list(concepts)
        self._vectors = self._stacked_vectors()
        self._gate_values = [(c.beta, c.tau) for c in concepts]
        self._gates = self._gate_tensors()
        self.version = 0
        """Incremented by :meth:`set_gate` and :meth:`set_vectors`: what the K/V cache checks."""
        self._last: tuple[weakref.ref[Tensor], int, _DeviceCache, EditInputs] | None = None
        self._last_split: tuple[Tensor, tuple[Tensor, Tensor]] | None = None

    def _stacked_vectors(self) -> _DeviceCache:
        concepts = self._concepts
        targets = torch.stack([c.target_input for c in concepts])
        directions = torch.stack([c.gate_direction for c in concepts])
        normaliser = (targets.double() * directions.double()).sum(-1, keepdim=True)
        zeros = torch.zeros_like(targets[0])
        locked = [c.superclass_input is not None for c in concepts]
        return _DeviceCache(
            {
                "locked": torch.tensor(locked, dtype=torch.float32),
                "targets": targets,
                "directions": (directions.double() / normaliser).float(),
                "key_inputs": torch.stack(
                    [zeros if c.superclass_input is None else c.superclass_input for c in concepts]
                ),
            }
        )

    def _gate_tensors(self) -> _DeviceCache:
        betas, taus = zip(*self._gate_values, strict=True)
        return _DeviceCache(
            {
                "beta": torch.tensor(betas, dtype=torch.float32),
                "tau": torch.tensor(taus, dtype=torch.float32),
            }
        )

    @property
    def nbytes(self) -> int:
        """Bytes of the stacked vectors and gates (one copy)."""
        tensors = [*self._vectors.master.values(), *self._gates.master.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    @property
    def text_dim(self) -> int:
        """d, the width of the encodings the edit applies to."""
        return self._vectors.master["targets"].shape[1]

    def index(self, token: str) -> int:
        """The position of the concept with ``token``; UNKNOWN_CONCEPT if none has it."""
        if token not in self.tokens:
            raise PerfusionRuntimeError(
                RuntimeErrorCode.UNKNOWN_CONCEPT,
                f"no concept here has the token {token!r}; these have: {', '.join(self.tokens)}",
            )
        return self.tokens.index(token)

    def gate(self, token: str) -> tuple[float, float]:
        """(β, τ) of the concept with ``token``."""
        return self._gate_values[self.index(token)]

    def set_gate(self, token: str, beta: float | None = None, tau: float | None = None) -> None:
        """Change the β and/or τ of the concept with ``token``; takes effect at the next forward
        pass (INVALID_GATE unless β is finite and τ > 0)."""
        index = self.index(token)
        current_beta, current_tau = self._gate_values[index]
        beta = current_beta if beta is None else beta
        tau = current_tau if tau is None else tau
        check_gate(beta, tau)
        self._gate_values[index] = (beta, tau)
        self._gates = self._gate_tensors()
        self.version += 1

    def set_vectors(
        self,
        token: str,
        target_input: Tensor,
        gate_direction: Tensor,
        superclass_input: Tensor | None,
    ) -> None:
        """Replace the i*, u and i_s of the concept with ``token`` (float32 [d], no gradient; i_s
        None for a concept with explicit key targets), as training does after each EMA update;
        takes effect at the next forward pass."""
        index = self.index(token)
        self._concepts[index] = replace(
            self._concepts[index],
            target_input=target_input,
            gate_direction=gate_direction,
            superclass_input=superclass_input,
        )
        self._vectors = self._stacked_vectors()
        self._last = None
        self.version += 1

    def vectors(self, device: torch.device) -> dict[str, Tensor]:
        """``targets``, ``directions``, ``key_inputs`` and the ``locked`` mask [N] on ``device``."""
        return self._vectors.on(device)

    def split(self, encodings: Tensor) -> tuple[Tensor, Tensor]:
        """Global locking: [B, 2T, d] → (concept prompt [B, T, d], superclass prompt [B, T, d]).

        The same two views are returned for the same tensor, so :meth:`inputs` is computed once
        per UNet call here too.
        """
        last = self._last_split
        if last is None or last[0] is not encodings:
            length = encodings.shape[1] // 2
            last = (encodings, (encodings[:, :length], encodings[:, length:]))
            self._last_split = last
        return last[1]

    def inputs(self, encodings: Tensor) -> EditInputs:
        """The :class:`EditInputs` of ``encodings`` [..., d].

        A UNet passes the same encodings tensor to each of its cross-attention layers, so the
        result for the last tensor seen is kept (until it changes in place, or a gate changes)
        and every layer after the first reuses it. The tensor itself is not kept alive.
        """
        last = self._last
        if (
            last is not None
            and last[0]() is encodings
            and last[1] == encodings._version
            and last[2] is self._gates
        ):
            return last[3]
        vectors = self._vectors.on(encodings.device)
        gates = self._gates.on(encodings.device)
        with _without_autocast(encodings.device):
            e = encodings.float()
            scores = e @ vectors["directions"].T
            gate = torch.sigmoid((scores - gates["beta"]) / gates["tau"])
            value_inputs = e - scores @ vectors["targets"]
            key_inputs = value_inputs + (gate * vectors["locked"]) @ vectors["key_inputs"]
        result = EditInputs(
            scores, gate, value_inputs.to(encodings.dtype), key_inputs.to(encodings.dtype)
        )
        self._last = (weakref.ref(encodings), encodings._version, self._gates, result)
        return result


class LayerEdit:
    """The edit of one cross-attention layer: value targets o_v [N, m] and, for concepts with
    explicit key targets, o_k [N, m] (zero rows for key-locked concepts).

    float32 targets are kept as given, not copied: training passes its trainable leaf tensors
    (on the device the layer runs on) and the edit's output is differentiable in them.
    """

    def __init__(
        self, concepts: ConceptSet, value_targets: Tensor, key_targets: Tensor | None = None
    ) -> None:
        self.concepts = concepts
        tensors = {"values": value_targets.float()}
        if key_targets is not None:
            tensors["keys"] = key_targets.float()
        self._targets = _DeviceCache(tensors)

    @property
    def trainable(self) -> bool:
        """Whether a target requires grad (training): its K and V are then never cached."""
        return any(t.requires_grad for t in self._targets.master.values())

    @property
    def nbytes(self) -> int:
        """Bytes this layer holds (one copy, on the device it was built for)."""
        return sum(t.numel() * t.element_size() for t in self._targets.master.values())

    def keys(self, encodings: Tensor, project: Projection) -> Tensor:
        """W_k'e: the edited keys of ``encodings`` [..., d], projected by ``project`` (to_k)."""
        inputs = self.concepts.inputs(encodings)
        keys = project(inputs.key_inputs)
        explicit = self._targets.on(encodings.device).get("keys")
        if explicit is None:
            return keys
        locked = self.concepts.vectors(encodings.device)["locked"]
        return (keys.float() + (inputs.gates * (1 - locked)) @ explicit).to(keys.dtype)

    def values(self, encodings: Tensor, project: Projection) -> Tensor:
        """W_v'e: the edited values of ``encodings`` [..., d], projected by ``project`` (to_v)."""
        inputs = self.concepts.inputs(encodings)
        values = project(inputs.value_inputs)
        if values.is_contiguous() and not torch.is_grad_enabled():
            # inference: add Σ gₙ o_vₙ in place, one fused matmul-add in the layer's dtype (the
            # gates and targets cast once; in float16/bfloat16 the edit term is rounded as the
            # layer's own output is)
            targets = self._targets.on(values.device, values.dtype)["values"]
            flat = values.view(-1, targets.shape[1])
            flat.addmm_(inputs.flat_gates(values.dtype), targets)
            return values
        targets = self._targets.on(values.device)["values"]
        return (values.float() + inputs.gates @ targets).to(values.dtype)
