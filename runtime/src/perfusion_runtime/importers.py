"""Importing concepts saved by the two public Perfusion codebases into v1 concept files.

    >>> concept = import_checkpoint("teddy.ckpt", family="sd-1", superclass="teddy", pipe=pipe)
    >>> pf.save(concept, "teddy.perfusion.safetensors")

Two layouts are recognised (spec/importers.md has the full mapping):

- **perfusion-pytorch** (``perfusion_pytorch.save``): ``{"embed_params": [c, d_enc],
  "key_value_params": [[i* [c, d], o [c, m]], ...], "C_inv": [d, d]}``, one pair per
  ``Rank1EditModule`` in module order — key then value projection of each cross-attention layer,
  no names. The layer order is recognised from the widths: the LDM UNet's (down, mid, up — the
  family table's order) or a diffusers UNet's registration order (down, up, mid).
- **ChenDarYen** (Key-Locked-Rank-One-Editing-for-Text-to-Image-Personalization):
  ``{"C_inv": [d, d], "target_input": [d], "embedding": {"string_to_token": …,
  "string_to_param": {placeholder: [1, d_enc]}}, "target_output": {"<ldm path>.attn2.to_k.
  target_output": [77, m], …}}``, layer names in LDM naming, one target per token position.

Both map to: target_input = i*; gate_direction = u = C⁻¹ i* (float64, from the file's C⁻¹);
embedding = the learned token embedding; value targets per layer. ChenDarYen's per-position
targets are taken at one position (``position``, default 5: the concept token of
"a photo of a <token>"), and its key targets are carried as explicit ``key_target.<path>``.
perfusion-pytorch's keys are locked to the superclass: with the model at hand, i_s is recovered
by least squares from o_k = W_k i_s over all layers and stored as ``superclass_input`` when it
reproduces every key target to ``KEY_LOCK_TOLERANCE``; otherwise the key targets are explicit.

The base fingerprint comes from the model (``pipe``), or is given (``base_fingerprint``); the
``custom`` family needs the model for its layer table (else IMPORT_NEEDS_MODEL).

Checkpoints are pickles and are read **only** with ``torch.load(..., weights_only=True)``: plain
tensors and containers, plus ``torch.nn.ParameterDict``, in which ChenDarYen's embedding manager
saves its embedding (rebuilt from its state by torch's weights-only unpickler; no code of the file
runs). Anything else — a pickled class or function — is IMPORT_UNSAFE, and never unpickled.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch
from torch import Tensor

import perfusion_format as pf

from .errors import PerfusionRuntimeError, RuntimeErrorCode
from .layer_names import ldm_to_diffusers
from .pipeline import pipeline_fingerprint, pipeline_layout

__all__ = [
    "DEFAULT_POSITION",
    "KEY_LOCK_TOLERANCE",
    "SourceLayout",
    "import_checkpoint",
    "read_checkpoint",
]

#: ChenDarYen's targets are per token position; this one is the concept token's in
#: "a photo of a <token>" (start token, a, photo, of, a, <token>).
DEFAULT_POSITION = 5
#: Largest relative residual ‖W_k î_s − o_k‖ / ‖o_k‖ (all layers stacked) at which recovered
#: superclass encoding î_s replaces perfusion-pytorch's explicit key targets.
KEY_LOCK_TOLERANCE = 1e-4
#: Largest checkpoint read (a ChenDarYen SD 1.x checkpoint is about 10 MB).
MAX_CHECKPOINT_SIZE = 512 * 1024 * 1024
#: Largest relative difference between the i* that perfusion-pytorch's modules each keep.
_TARGET_AGREEMENT = 1e-3

_TARGET_OUTPUT = re.compile(r"(?P<module>.+)\.to_(?P<projection>[kv])\.target_output")
_OPCODE = re.compile(r"Unsupported operand [0-9]+")
_GLOBAL = re.compile(r"Unsupported global: (?:GLOBAL )?([^\s]+)")


class SourceLayout(StrEnum):
    """The checkpoint layouts :func:`import_checkpoint` reads."""

    PERFUSION_PYTORCH = "perfusion-pytorch"
    CHENDARYEN = "chendaryen"


@dataclass(frozen=True)
class _Source:
    """A checkpoint reduced to what a v1 concept needs (diffusers layer paths, float32)."""

    layout: SourceLayout
    embedding: Tensor
    target_input: Tensor
    key_targets: dict[str, Tensor]
    value_targets: dict[str, Tensor]
    training: dict[str, Any]


def _invalid(message: str) -> PerfusionRuntimeError:
    return PerfusionRuntimeError(RuntimeErrorCode.IMPORT_INVALID, message)


def read_checkpoint(path: str | os.PathLike[str]) -> Any:
    """Load a checkpoint with ``torch.load(path, map_location="cpu", weights_only=True)`` only.

    IMPORT_UNSAFE when the weights-only unpickler refuses it for a class or function it does not
    allow (nothing of the file ran); IMPORT_INVALID when it is not a torch file — including a
    pickle with opcodes ``torch.save`` never writes; ``OSError`` when it cannot be read.
    """
    size = os.stat(path).st_size
    if size > MAX_CHECKPOINT_SIZE:
        raise _invalid(f"{os.fspath(path)}: {size} bytes; Perfusion checkpoints are far smaller")
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals([torch.nn.ParameterDict]):
            warnings.simplefilter("ignore")  # e.g. about the pickle protocol of old files
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        opcode = _OPCODE.search(str(error))
        if opcode:
            raise _invalid(f"{os.fspath(path)}: not a torch checkpoint ({opcode[0]})") from None
        found = _GLOBAL.search(str(error))
        raise PerfusionRuntimeError(
            RuntimeErrorCode.IMPORT_UNSAFE,
            f"{os.fspath(path)}: refused without unpickling it: it needs "
            f"{found[1] if found else 'an object'}, which is not a tensor or a container",
        ) from None
    except OSError:
        raise
    except Exception as error:  # any other failure to parse the untrusted file
        raise _invalid(
            f"{os.fspath(path)}: not a torch checkpoint ({type(error).__name__})"
        ) from None


def _tensor(value: Any, what: str, ndim: int) -> Tensor:
    """``value`` as a finite float64 tensor of rank ``ndim`` (IMPORT_INVALID otherwise)."""
    if not isinstance(value, Tensor) or value.ndim != ndim or not value.is_floating_point():
        raise _invalid(f"{what} is not a float tensor of rank {ndim}")
    value = value.detach().double()
    if not torch.isfinite(value).all():
        raise _invalid(f"{what} contains NaN or infinity")
    return value


def _layer_key(path: str, sections: Sequence[str]) -> tuple[int, ...]:
    """Sort key of a diffusers attn2 path: its block kind's rank in ``sections``, then indices."""
    head = path.split(".", 1)[0]
    numbers = tuple(int(part) for part in path.split(".") if part.isdigit())
    return (sections.index(head) if head in sections else len(sections), *numbers)


def _module_orders(layers: Sequence[tuple[str, int]]) -> list[list[tuple[str, int]]]:
    """The orders perfusion-pytorch may have met the layers in: an LDM UNet's modules (down,
    mid, up) and a diffusers UNet's (down_blocks, up_blocks, then mid_block)."""
    return [
        sorted(layers, key=lambda layer: _layer_key(layer[0], sections))
        for sections in (("down_blocks", "mid_block", "up_blocks"), ("down_blocks", "up_blocks"))
    ]


def _read_perfusion_pytorch(
    checkpoint: Mapping[str, Any], layers: Sequence[tuple[str, int]], concept: int | None
) -> _Source:
    entries = checkpoint["key_value_params"]
    if not isinstance(entries, list | tuple) or not entries or len(entries) % 2:
        raise _invalid("key_value_params is not a list of key and value modules")
    modules = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, list | tuple) or len(entry) != 2:
            raise _invalid(f"key_value_params[{index}] is not an (i*, output) pair")
        modules.append(
            (_tensor(entry[0], f"i* of module {index}", 2), _tensor(entry[1], f"o of {index}", 2))
        )
    embeddings = checkpoint["embed_params"]
    if embeddings is None:
        raise _invalid("the checkpoint has no concept embedding (no EmbeddingWrapper was saved)")
    embeddings = _tensor(embeddings, "embed_params", 2)
    count = embeddings.shape[0]
    if any(i.shape[0] != count or o.shape[0] != count for i, o in modules):
        raise _invalid("embed_params and key_value_params hold different numbers of concepts")
    if concept is None and count > 1:
        raise _invalid(f"the checkpoint holds {count} concepts: choose one (concept index)")
    concept = concept or 0
    if not 0 <= concept < count:
        raise _invalid(f"concept index {concept} is out of range (0 to {count - 1})")
    pairs = zip(modules[::2], modules[1::2], strict=True)
    widths = [(key.shape[1], value.shape[1]) for (_, key), (_, value) in pairs]
    order = next(
        (
            candidate
            for candidate in _module_orders(layers)
            if widths == [(m, m) for _, m in candidate]
        ),
        None,
    )
    if order is None:
        raise PerfusionRuntimeError(
            RuntimeErrorCode.LAYER_MISMATCH,
            f"the checkpoint's {len(widths)} cross-attention layers have widths "
            f"{[m for m, _ in widths]}; the base's {len(layers)} are {[m for _, m in layers]}",
        )
    target = modules[0][0][concept]
    if any((i[concept] - target).norm() > _TARGET_AGREEMENT * target.norm() for i, _ in modules):
        raise _invalid("the modules of the checkpoint disagree on the target input i*")
    return _Source(
        layout=SourceLayout.PERFUSION_PYTORCH,
        embedding=embeddings[concept],
        target_input=target,
        key_targets={path: modules[2 * n][1][concept] for n, (path, _) in enumerate(order)},
        value_targets={path: modules[2 * n + 1][1][concept] for n, (path, _) in enumerate(order)},
        training={"concept_index": concept},
    )


def _chendaryen_embedding(embedding: Any) -> Tensor:
    """The one learned vector of ChenDarYen's ``embedding`` entry (EmbeddingManager.state_dict)."""
    params = embedding.get("string_to_param") if isinstance(embedding, dict) else None
    if isinstance(params, torch.nn.ParameterDict):
        params = vars(params).get("_parameters")  # its stored parameters, no method of it runs
    if not isinstance(params, dict) or len(params) != 1:
        raise _invalid("embedding.string_to_param must map exactly one placeholder to its vector")
    vectors = next(iter(params.values()))
    if isinstance(vectors, Tensor) and vectors.ndim == 1:
        vectors = vectors[None]
    vectors = _tensor(vectors, "the placeholder's embedding", 2)
    if vectors.shape[0] != 1:
        raise _invalid(
            f"the placeholder has {vectors.shape[0]} vectors (num_vectors_per_token); "
            "a concept has one token embedding"
        )
    return vectors[0]


def _read_chendaryen(
    checkpoint: Mapping[str, Any], layers: Sequence[tuple[str, int]], position: int
) -> _Source:
    outputs = checkpoint["target_output"]
    if not isinstance(outputs, dict):
        raise _invalid("target_output is not a mapping of module names to tensors")
    targets: dict[str, dict[str, Tensor]] = {"k": {}, "v": {}}
    widths = dict(layers)
    for name, value in outputs.items():
        match = _TARGET_OUTPUT.fullmatch(str(name))
        path = ldm_to_diffusers(match["module"]) if match else None
        if match is None or path is None:
            raise _invalid(f"target_output has {str(name)[:120]!r}, not an LDM attn2 to_k/to_v")
        if path not in widths:
            raise PerfusionRuntimeError(
                RuntimeErrorCode.LAYER_MISMATCH, f"{name} ({path}) is not a layer of the base"
            )
        if isinstance(value, Tensor) and value.ndim == 1:  # one target for every position
            value = value[None]
        rows = _tensor(value, str(name), 2)
        if rows.shape[1] != widths[path]:
            raise PerfusionRuntimeError(
                RuntimeErrorCode.LAYER_MISMATCH,
                f"{name} is {rows.shape[1]} wide; the base's {path} is {widths[path]}",
            )
        if rows.shape[0] > 1 and not 0 <= position < rows.shape[0]:
            raise _invalid(f"position {position} is out of range: {name} has {rows.shape[0]} rows")
        targets[match["projection"]][path] = rows[position if rows.shape[0] > 1 else 0]
    missing = [path for path in widths if path not in targets["k"] or path not in targets["v"]]
    if missing:
        raise PerfusionRuntimeError(
            RuntimeErrorCode.LAYER_MISMATCH,
            f"the checkpoint has no key or value target for {len(missing)} of the base's "
            f"{len(widths)} layers (e.g. {missing[0]})",
        )
    step = checkpoint.get("global_step")
    return _Source(
        layout=SourceLayout.CHENDARYEN,
        embedding=_chendaryen_embedding(checkpoint["embedding"]),
        target_input=_tensor(checkpoint["target_input"], "target_input", 1),
        key_targets=targets["k"],
        value_targets=targets["v"],
        training={"position": position, **({"steps": step} if isinstance(step, int) else {})},
    )


_LAYOUTS: dict[SourceLayout, frozenset[str]] = {
    SourceLayout.PERFUSION_PYTORCH: frozenset({"embed_params", "key_value_params", "C_inv"}),
    SourceLayout.CHENDARYEN: frozenset({"C_inv", "target_input", "embedding", "target_output"}),
}


def _layout(checkpoint: Any) -> SourceLayout:
    if isinstance(checkpoint, dict):
        for layout, keys in _LAYOUTS.items():
            if keys <= checkpoint.keys():
                return layout
        found = ", ".join(sorted(map(str, checkpoint))[:8])
    else:
        found = f"a {type(checkpoint).__name__}"
    raise _invalid(f"not a perfusion-pytorch or ChenDarYen checkpoint (it holds {found or '{}'})")


def _base(
    family: str, pipe: Any, base_fingerprint: str | None
) -> tuple[pf.Family, tuple[tuple[str, int], ...], tuple[tuple[str, int], ...]]:
    """The family, its text encoders (name, width) and its layer table (custom: ``pipe``'s)."""
    spec = pf.FAMILIES.get(family)
    if spec is None:
        raise pf.FormatError(
            pf.ErrorCode.INVALID_FIELD,
            f"unknown family {family!r}; one of {', '.join(pf.FAMILIES)}",
        )
    if pipe is None:
        if spec.layers is None:
            raise PerfusionRuntimeError(
                RuntimeErrorCode.IMPORT_NEEDS_MODEL,
                "the custom family's layers come from the model: give the model",
            )
        if base_fingerprint is None:
            raise PerfusionRuntimeError(
                RuntimeErrorCode.IMPORT_NEEDS_MODEL,
                "the base fingerprint needs the model: give the model or the fingerprint",
            )
        return spec, spec.text_encoders, spec.layers
    layout = pipeline_layout(pipe)
    if layout.family != family:
        raise PerfusionRuntimeError(
            RuntimeErrorCode.FAMILY_MISMATCH, f"the model is {layout.family}, not {family}"
        )
    return spec, layout.text_encoders, spec.layers or layout.layers


def _check_widths(
    family: str, text_encoders: Sequence[tuple[str, int]], found: Mapping[str, Tensor]
) -> None:
    """FAMILY_MISMATCH unless every tensor in ``found`` is as wide as the family's one encoder."""
    if len(text_encoders) != 1:
        raise PerfusionRuntimeError(
            RuntimeErrorCode.FAMILY_MISMATCH,
            f"{family} needs an embedding per text encoder; these checkpoints carry one",
        )
    width = text_encoders[0][1]
    for what, tensor in found.items():
        if any(dim != width for dim in tensor.shape):
            raise PerfusionRuntimeError(
                RuntimeErrorCode.FAMILY_MISMATCH,
                f"the checkpoint's {what} is {list(tensor.shape)}: {family} encodes {width} wide",
            )


def _superclass_input(
    pipe: Any, layers: Sequence[tuple[str, int]], key_targets: Mapping[str, Tensor]
) -> Tensor | None:
    """î_s = argmin ‖W_k i − o_k‖ over all layers stacked, if it reproduces every key target."""
    weights = torch.cat(
        [pipe.unet.get_submodule(path).to_k.weight.detach().double().cpu() for path, _ in layers]
    )
    targets = torch.cat([key_targets[path] for path, _ in layers])
    solution = torch.linalg.lstsq(weights, targets[:, None]).solution[:, 0]
    residual = (weights @ solution - targets).norm() / targets.norm()
    return solution if residual <= KEY_LOCK_TOLERANCE else None


def import_checkpoint(
    path: str | os.PathLike[str],
    *,
    family: str,
    superclass: str,
    pipe: Any = None,
    base_fingerprint: str | None = None,
    token: str | None = None,
    name: str | None = None,
    position: int = DEFAULT_POSITION,
    concept_index: int | None = None,
    dtype: pf.DType = "F32",
) -> pf.Concept:
    """A v1 concept from a perfusion-pytorch or ChenDarYen Perfusion checkpoint.

    ``family`` is the base family the checkpoint was trained on (``pipe``'s, when given).
    ``superclass`` is the word the keys are locked to (the checkpoints do not record it);
    ``token`` defaults to ``<superclass>`` and ``name`` to the superclass. ``pipe`` gives the
    base fingerprint, the ``custom`` layer table and key locking to i_s; without it pass
    ``base_fingerprint``. ``position`` picks ChenDarYen's per-position targets,
    ``concept_index`` one concept of a perfusion-pytorch file holding several.

    Raises IMPORT_UNSAFE, IMPORT_INVALID, IMPORT_NEEDS_MODEL, FAMILY_MISMATCH, LAYER_MISMATCH,
    BASE_MISMATCH (``base_fingerprint`` is not ``pipe``'s) or a :class:`~perfusion_format.
    FormatError` (e.g. DEGENERATE_GATE when C⁻¹ is not positive definite).
    """
    spec, text_encoders, layers = _base(family, pipe, base_fingerprint)
    if pipe is not None:
        fingerprint = pipeline_fingerprint(pipe, layers)
        if base_fingerprint not in (None, fingerprint):
            raise PerfusionRuntimeError(
                RuntimeErrorCode.BASE_MISMATCH,
                f"the model's fingerprint is {fingerprint}, not {base_fingerprint}",
            )
        base_fingerprint = fingerprint
    checkpoint = read_checkpoint(path)
    layout = _layout(checkpoint)
    c_inv = _tensor(checkpoint["C_inv"], "C_inv", 2)
    _check_widths(family, text_encoders, {"C⁻¹": c_inv})
    if layout is SourceLayout.PERFUSION_PYTORCH:
        source = _read_perfusion_pytorch(checkpoint, layers, concept_index)
    else:
        source = _read_chendaryen(checkpoint, layers, position)
    _check_widths(
        family, text_encoders, {"embedding": source.embedding, "target input": source.target_input}
    )
    superclass_input = None
    if layout is SourceLayout.PERFUSION_PYTORCH and pipe is not None:
        superclass_input = _superclass_input(pipe, layers, source.key_targets)
    with open(path, "rb") as handle:
        digest = pf.file_digest(handle)
    assert base_fingerprint is not None  # _base() refuses a call with neither
    return pf.create_concept(
        name=name or superclass,
        token=token or f"<{superclass}>",
        superclass=superclass,
        family=spec.name,
        base_fingerprint=base_fingerprint,
        embeddings={text_encoders[0][0]: source.embedding[None].numpy()},
        target_input=source.target_input.numpy(),
        gate_direction=(c_inv @ source.target_input).numpy(),
        superclass_input=None if superclass_input is None else superclass_input.numpy(),
        key_targets=None
        if superclass_input is not None
        else {path: target.numpy() for path, target in source.key_targets.items()},
        value_targets={path: target.numpy() for path, target in source.value_targets.items()},
        dtype=dtype,
        description=f"Imported from a {layout} Perfusion checkpoint.",
        training={"source": str(layout), "source_digest": digest, **source.training},
    )
