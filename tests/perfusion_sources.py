"""Checkpoints in the layouts of the two public Perfusion codebases, for a tiny sd-1 pipeline.

Written the way each codebase saves them (``torch.save`` of the same objects), with values shaped
like trained ones: i* near the superclass encoding, C⁻¹ from the bundled captions, perfusion-
pytorch's key targets locked to the superclass (o_k = W_k i_s), learned-looking value targets.

- perfusion-pytorch (``perfusion_pytorch/save_load.py``): ``{"embed_params": [c, d_enc],
  "key_value_params": [[ema_concept_text_encs [c, d], concept_outputs [c, m]], …], "C_inv"}``,
  one pair per ``Rank1EditModule`` in module order (to_k then to_v of each attn2);
- ChenDarYen (``Perfusion.on_save_checkpoint``): ``{"global_step", "C_inv", "target_input",
  "embedding": EmbeddingManager.state_dict() — {"string_to_token": {"*": id},
  "string_to_param": nn.ParameterDict}, "target_output": {"<ldm path>.to_k.target_output":
  [77, m], …}}``, per-position targets of every ``ROELinear``.

The tiny UNet's attn2 layers by their LDM names (2 res blocks per level; level 0 of the up path
is a plain UpBlock2D) are written out in :data:`LDM_NAMES`, independently of the importer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import perfusion_runtime as pr

SUPERCLASS = "teddy"
PROMPT = "a photo of a {} on a table"
POSITION = 5  # the concept token in PROMPT: start, a, photo, of, a, <token>
TEXT_LENGTH = 77

#: LDM module → diffusers module of the tiny sd-1 UNet's cross-attention layers, in LDM order.
LDM_NAMES = {
    "input_blocks.1.1": "down_blocks.0.attentions.0",
    "input_blocks.2.1": "down_blocks.0.attentions.1",
    "middle_block.1": "mid_block.attentions.0",
    "output_blocks.3.1": "up_blocks.1.attentions.0",
    "output_blocks.4.1": "up_blocks.1.attentions.1",
    "output_blocks.5.1": "up_blocks.1.attentions.2",
}
#: The same layers in the order a diffusers UNet registers them (down, up, then mid).
DIFFUSERS_ORDER = [
    *list(LDM_NAMES.values())[:2],
    *list(LDM_NAMES.values())[3:],
    "mid_block.attentions.0",
]
BLOCK = ".transformer_blocks.0.attn2"


@dataclass(frozen=True)
class Source:
    """What a source checkpoint holds, as float64 numpy, by diffusers attn2 path."""

    embedding: np.ndarray  # [d_enc]
    target_input: np.ndarray  # i* [d]
    c_inv: np.ndarray  # [d, d] (as stored, float32 values)
    superclass_input: np.ndarray  # i_s [d]
    key_targets: dict[str, np.ndarray]  # [T, m] per position (perfusion-pytorch: [1, m])
    value_targets: dict[str, np.ndarray]


def weights(pipe: Any, path: str) -> tuple[np.ndarray, np.ndarray]:
    """W_k, W_v of one attn2 layer (float64)."""
    attention = pipe.unet.get_submodule(path + BLOCK)
    return (
        attention.to_k.weight.detach().double().cpu().numpy(),
        attention.to_v.weight.detach().double().cpu().numpy(),
    )


def make_source(pipe: Any, seed: int, rows: int) -> Source:
    """Random trained-looking values for ``pipe``: ``rows`` target rows per layer (ChenDarYen:
    one per token position, the key rows W_k times the superclass prompt's encodings)."""
    rng = np.random.default_rng(seed)
    encodings = pr.encode_prompts(pipe, [PROMPT.format(SUPERCLASS)])[0][0].double().numpy()
    superclass_input = encodings[POSITION]
    d = superclass_input.shape[0]
    target = superclass_input + 0.2 * np.linalg.norm(superclass_input) / np.sqrt(d) * (
        rng.standard_normal(d)
    )
    covariance = pr.build_covariance(pipe).numpy()
    c_inv = np.linalg.inv(covariance).astype(np.float32).astype(np.float64)
    keys, values = {}, {}
    for path in LDM_NAMES.values():
        w_k, w_v = weights(pipe, path)
        positions = encodings[:rows] if rows > 1 else superclass_input[None]
        keys[path] = (positions @ w_k.T).astype(np.float32).astype(np.float64)
        values[path] = rng.standard_normal((rows, w_v.shape[0])).astype(np.float32)
    return Source(
        embedding=rng.standard_normal(d).astype(np.float32).astype(np.float64) * 0.5,
        target_input=target.astype(np.float32).astype(np.float64),
        c_inv=c_inv,
        superclass_input=superclass_input,
        key_targets=keys,
        value_targets={path: v.astype(np.float64) for path, v in values.items()},
    )


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.tensor(array, dtype=torch.float32)


def save_perfusion_pytorch(source: Source, path: Path, order: list[str] | None = None) -> Path:
    """Save ``source`` as ``perfusion_pytorch.save`` does, modules in ``order`` (LDM's)."""
    key_value_params = []
    for layer in order or list(LDM_NAMES.values()):
        key_value_params.append([_t(source.target_input[None]), _t(source.key_targets[layer])])
        key_value_params.append([_t(source.target_input[None]), _t(source.value_targets[layer])])
    package = {
        "embed_params": _t(source.embedding[None]),
        "key_value_params": key_value_params,
        "C_inv": _t(source.c_inv),
    }
    torch.save(package, path)
    return path


def save_chendaryen(source: Source, path: Path) -> Path:
    """Save ``source`` as ChenDarYen's ``Perfusion.on_save_checkpoint`` leaves a checkpoint."""
    target_output = {}
    for ldm, layer in LDM_NAMES.items():
        for projection, targets in (("k", source.key_targets), ("v", source.value_targets)):
            name = f"{ldm}.transformer_blocks.0.attn2.to_{projection}.target_output"
            target_output[name] = _t(targets[layer])
    embedding = {
        "string_to_token": {"*": 265},
        "string_to_param": torch.nn.ParameterDict(
            {"*": torch.nn.Parameter(_t(source.embedding[None]))}
        ),
    }
    checkpoint = {
        "global_step": 400,
        "C_inv": _t(source.c_inv),
        "target_input": _t(source.target_input),
        "embedding": embedding,
        "target_output": target_output,
    }
    torch.save(checkpoint, path)
    return path


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def source_kv(
    source: Source, pipe: Any, layer: str, encodings: np.ndarray, beta: float, tau: float
) -> tuple[np.ndarray, np.ndarray]:
    """The source codebase's K and V of one layer for encodings [T, d] (float64): the paper's
    W'e = W e − s(e)·W i* + σ((s(e) − β)/τ)·o*, s(e) = eᵀC⁻¹i* / i*ᵀC⁻¹i*, with the target row
    of each token position (one row: the same for every position)."""
    w_k, w_v = weights(pipe, layer)
    e, target = encodings.astype(np.float64), source.target_input
    s = (e @ source.c_inv @ target) / (target @ source.c_inv @ target)
    gate = sigmoid((s - beta) / tau)[:, None]

    def rows(targets: np.ndarray) -> np.ndarray:
        return targets[: len(e)] if len(targets) > 1 else np.repeat(targets, len(e), axis=0)

    keys = e @ w_k.T - s[:, None] * (w_k @ target) + gate * rows(source.key_targets[layer])
    values = e @ w_v.T - s[:, None] * (w_v @ target) + gate * rows(source.value_targets[layer])
    return keys, values
