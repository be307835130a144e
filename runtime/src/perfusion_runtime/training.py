"""Perfusion training: a new concept from a few pictures of it, by key-locked rank-one editing.

    >>> import perfusion_format as pf, perfusion_runtime as pr
    >>> config = pr.TrainingConfig(token="<teddy>", superclass="teddy")
    >>> concept = pr.train(pipe, "photos/teddy", config, checkpoint_dir="teddy.checkpoint")
    >>> pf.save(concept, "teddy.perfusion.safetensors")

What is learned: the concept's token embedding (one row per text encoder) and one value target
o_v per cross-attention layer — nothing else. Every weight of the pipeline stays bit for bit as it
was: parameters are frozen for the run and their ``requires_grad`` flags restored afterwards. Keys
are locked to the superclass (o_k = W_k i_s; the file carries i_s). With ``lock_keys=False`` (the
paper's ablation, to measure what locking buys) one key target o_k per layer is learned too,
starting from W_k i_s at the rate of the value targets, and the file carries the key targets
instead of i_s.

The forward pass is the runtime's own. The trainable tensors are put into the pipeline by
:func:`~perfusion_runtime.pipeline.install` — the tokenizer copy, :class:`~perfusion_runtime.tokens.
ConceptEmbedding`, :class:`~perfusion_runtime.edit.ConceptSet`, :class:`~perfusion_runtime.edit.
LayerEdit` and attention processors that :func:`~perfusion_runtime.apply` uses — so training and
inference evaluate one implementation of the equation, and gradients reach the embedding rows and
value targets through it (autograd on takes the edit's differentiable branch).

One forward pass, a *micro-batch* of ``batch`` images:

1. prompts from the templates with the token, encoded by the pipeline's own ``encode_prompt``;
2. i* ← EMA (``ema_decay``) of the batch mean of the encodings at the token's position, and
   i_s ← EMA of the same prompts' encodings with the superclass word, both without gradient (the
   first micro-batch sets them); u = C⁻¹ i*; the concept set takes i*, u, i_s with the training
   gate (β, τ);
3. the noise-prediction MSE (v-prediction or sample when the scheduler's ``prediction_type`` says
   so) on the DDPM schedule of the pipeline's scheduler config, each image weighted by its mask.

AdamW (value targets at ``lr_values``, embedding rows at ``lr_embedding``) steps once every
``accumulate`` micro-batches: one *step* sees ``batch × accumulate`` images. fp16/bf16 autocast is
used on CUDA only (fp16 with a gradient scaler); trainable tensors stay float32.

Images (and masks) are read, checked and encoded to latents once, up front
(:mod:`perfusion_runtime.training_data`); an image whose shorter side is under ``resolution / 4``
is refused.

Checkpoints (``checkpoint_dir/checkpoint.safetensors``, replaced atomically every
``checkpoint_every`` steps) hold the embedding rows, value targets, the EMAs of i* and i_s and
AdamW's moments as safetensors tensors, and the step's losses, the gradient scaler and the run's
identity (settings, image digest, covariance digest, base fingerprint) as JSON in its metadata.
Nothing is pickled; a checkpoint of another run is refused (INVALID_CHECKPOINT).

Randomness: each micro-batch draws its images, flips, templates, timesteps and noise from a
generator seeded from (seed, step, micro-batch) alone. Resuming therefore needs no RNG state: on
the CPU a run resumed from a checkpoint ends with the same file, byte for byte, as one never
interrupted. For the same reason the file records no wall-clock time (the same images, settings
and seed give the same file); :class:`TrainingProgress` reports seconds.

Every refusal — bad settings, images, masks, token, superclass, covariance or checkpoint — is
raised before the first step, with a :class:`~perfusion_runtime.RuntimeErrorCode`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDPMScheduler
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_tensors
from torch import Tensor, nn

import perfusion_format as pf

from .covariance import build_covariance, covariance_factor, solve_gate
from .edit import ConceptSet, ConceptVectors, LayerEdit, check_gate
from .errors import PerfusionRuntimeError, RuntimeErrorCode
from .initial_concept import new_concept
from .pipeline import check_not_applied, check_token_free, install, pipeline_layout
from .prompts import encode_prompts, superclass_token_ids, unet_conditioning
from .tokens import extended_tokenizer
from .training_data import LatentImages, TrainingImages, read_images

__all__ = [
    "CHECKPOINT_NAME",
    "DEFAULT_TEMPLATES",
    "TrainingConfig",
    "TrainingProgress",
    "train",
]

#: Prompt templates; ``{}`` is replaced by the token (and by the superclass word for i_s).
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a rendition of the {}",
)
#: The checkpoint file in ``checkpoint_dir``: safetensors, its JSON state in the metadata.
CHECKPOINT_NAME = "checkpoint.safetensors"
_CHECKPOINT_KEY = "perfusion_runtime.training_checkpoint"
_CHECKPOINT_VERSION = 1
_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
#: Settings the training summary leaves out (the file has the token and superclass already).
_NOT_SUMMARISED = frozenset({"token", "superclass", "templates"})
#: Keyword arguments of :func:`train` passed on to :func:`perfusion_format.create_concept`.
_METADATA_ARGUMENTS = frozenset(
    {
        "name",
        "dtype",
        "created",
        "author",
        "license",
        "description",
        "tags",
        "inference_gate",
        "extra_metadata",
    }
)


@dataclass(frozen=True)
class TrainingConfig:
    """What to learn and how. The defaults are the paper's: 400 steps of an effective batch of
    16 (4 × 4 accumulation), learning rates 0.03 (value targets) and 0.006 (embedding), gate
    β = 0.75, τ = 0.1, EMA decay 0.99."""

    token: str
    """The trigger token to create, e.g. ``<teddy>``; it must not be a token already."""
    superclass: str
    """The superclass word, one token of every tokenizer, e.g. ``teddy``."""
    steps: int = 400
    """Optimizer steps (each of ``batch × accumulate`` images)."""
    batch: int = 4
    """Images per forward pass."""
    accumulate: int = 4
    """Forward passes whose gradients are summed before each optimizer step."""
    lr_values: float = 0.03
    """AdamW learning rate of the value targets."""
    lr_embedding: float = 0.006
    """AdamW learning rate of the token embedding rows."""
    weight_decay: float = 0.01
    """AdamW weight decay (torch's default)."""
    beta: float = 0.75
    """Gate threshold β during training (stored as the file's training gate)."""
    tau: float = 0.1
    """Gate temperature τ during training."""
    ema_decay: float = 0.99
    """Decay of the EMAs of i* and i_s, updated once per forward pass."""
    resolution: int | None = None
    """Square training size in pixels (a multiple of 8); default: the UNet's sample size × the
    VAE's scale factor (512 for SD 1.5, 1024 for SDXL)."""
    seed: int = 0
    """Seed of every random draw (non-negative)."""
    dtype: str = "auto"
    """Compute precision: ``fp32``, ``fp16`` or ``bf16`` (autocast, CUDA only), or ``auto``:
    bf16 on CUDA where supported, else fp16 there, fp32 elsewhere."""
    checkpoint_every: int = 0
    """Write a checkpoint every N steps (0: never); needs ``checkpoint_dir``."""
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    """Prompt templates, each with exactly one ``{}``."""
    flip: bool = True
    """Random horizontal flips."""
    lock_keys: bool = True
    """Lock the keys to the superclass (o_k = W_k i_s), as the paper does; False learns one
    key target per layer (from W_k i_s, at ``lr_values``) — the paper's "unlocked" ablation."""

    def check(self) -> None:
        """Refuse settings out of range (INVALID_TRAINING_CONFIG; a bad gate: INVALID_GATE)."""
        problems = [
            (self.steps >= 1, f"steps must be ≥ 1, got {self.steps}"),
            (self.batch >= 1, f"batch must be ≥ 1, got {self.batch}"),
            (self.accumulate >= 1, f"accumulate must be ≥ 1, got {self.accumulate}"),
            (
                all(
                    math.isfinite(x) and x >= 0
                    for x in (self.lr_values, self.lr_embedding, self.weight_decay)
                ),
                "learning rates and weight decay must be finite and ≥ 0",
            ),
            (0 <= self.ema_decay < 1, f"ema_decay must be in [0, 1), got {self.ema_decay}"),
            (
                self.resolution is None or (self.resolution >= 8 and self.resolution % 8 == 0),
                f"resolution must be a positive multiple of 8, got {self.resolution}",
            ),
            (0 <= self.seed < 2**63, f"seed must be in [0, 2⁶³), got {self.seed}"),
            (
                self.dtype in ("auto", *_PRECISIONS),
                f"dtype must be auto, fp32, fp16 or bf16, got {self.dtype!r}",
            ),
            (self.checkpoint_every >= 0, "checkpoint_every must be ≥ 0"),
            (bool(self.templates), "at least one template is needed"),
        ]
        problems += [
            (
                template.count("{}") == 1 and not set("{}") & set(template.replace("{}", "")),
                f"template {template!r} must hold exactly one {{}} and no other brace",
            )
            for template in self.templates
        ]
        for ok, message in problems:
            if not ok:
                raise PerfusionRuntimeError(RuntimeErrorCode.INVALID_TRAINING_CONFIG, message)
        check_gate(self.beta, self.tau)


@dataclass(frozen=True)
class TrainingProgress:
    """What :func:`train` reports to its ``progress`` callback after each optimizer step."""

    step: int
    """Steps done, 1 to ``steps``."""
    steps: int
    """Steps in the whole run."""
    loss: float
    """This step's loss (the mean over its micro-batches)."""
    seconds: float
    """Seconds since :func:`train` was called."""


# --------------------------------------------------------------------------------------------
# The trainable state and its checkpoint
# --------------------------------------------------------------------------------------------


class _State:
    """Everything a run changes and a checkpoint restores: the trainable tensors (float32 leaves
    on the training device), the EMAs of i* and i_s, the optimizer, the gradient scaler and the
    per-step losses (their count is the step)."""

    def __init__(
        self,
        initial: pf.Concept,
        config: TrainingConfig,
        device: torch.device,
        fp16: bool,
        key_targets: dict[str, np.ndarray] | None = None,
    ) -> None:
        def leaf(array: np.ndarray) -> Tensor:
            return torch.tensor(array, dtype=torch.float32, device=device).requires_grad_()

        self.device = device
        self.embeddings = {name: leaf(row) for name, row in initial.embeddings.items()}
        self.values = {path: leaf(v[None]) for path, v in initial.value_targets.items()}
        #: Learned key targets [1, m] by layer (``lock_keys=False``), else None.
        self.keys = (
            None if key_targets is None else {p: leaf(k[None]) for p, k in key_targets.items()}
        )
        self.target_input: Tensor | None = None
        self.superclass_input: Tensor | None = None
        self.losses: list[float] = []
        self.optimizer = torch.optim.AdamW(
            [
                {"params": list(self.values.values()), "lr": config.lr_values},
                {"params": list(self.embeddings.values()), "lr": config.lr_embedding},
                {"params": list((self.keys or {}).values()), "lr": config.lr_values},
            ],
            weight_decay=config.weight_decay,
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)

    @property
    def step(self) -> int:
        """Optimizer steps done."""
        return len(self.losses)

    def track(self, target_input: Tensor, superclass_input: Tensor, decay: float) -> None:
        """One EMA update of i* and i_s (the first call sets them)."""
        if self.target_input is None or self.superclass_input is None:
            self.target_input, self.superclass_input = target_input, superclass_input
        else:
            self.target_input.lerp_(target_input, 1 - decay)
            self.superclass_input.lerp_(superclass_input, 1 - decay)

    def trainable(self) -> dict[str, Tensor]:
        """The trainable tensors by checkpoint name (the live leaves)."""
        return {
            **{f"embedding.{name}": row for name, row in self.embeddings.items()},
            **{f"value_target.{path}": value for path, value in self.values.items()},
            **{f"key_target.{path}": key for path, key in (self.keys or {}).items()},
        }

    def finite(self) -> bool:
        """False once a trainable tensor holds a NaN or an infinity."""
        return all(bool(torch.isfinite(t).all()) for t in self.trainable().values())

    def save(self, path: Path, run: dict[str, Any]) -> None:
        """Write the checkpoint atomically: safetensors, its JSON state in the metadata."""
        assert self.target_input is not None
        assert self.superclass_input is not None
        named = {
            **self.trainable(),
            "target_input": self.target_input,
            "superclass_input": self.superclass_input,
        }
        parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        for index, parameter in enumerate(parameters):
            for key, value in self.optimizer.state[parameter].items():
                named[f"optimizer.{index}.{key}"] = value
        info = {
            "version": _CHECKPOINT_VERSION,
            "run": run,
            "losses": self.losses,
            "scaler": self.scaler.state_dict(),
        }
        data = save_tensors(
            {name: t.detach().cpu().contiguous() for name, t in named.items()},
            metadata={_CHECKPOINT_KEY: json.dumps(info)},
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        pf.write_atomic(path, data)

    def load(self, path: Path, run: dict[str, Any], steps: int) -> None:
        """Restore the checkpoint at ``path``; it must come from a run with the same ``run``
        identity (settings, images, covariance, base weights) and be at most at ``steps``."""
        try:
            with safe_open(path, framework="pt") as checkpoint:
                info = json.loads((checkpoint.metadata() or {})[_CHECKPOINT_KEY])
                tensors = {name: checkpoint.get_tensor(name) for name in checkpoint.keys()}  # noqa: SIM118
            losses = [float(loss) for loss in info["losses"]]
            scaler = dict(info["scaler"])
            moments: dict[int, dict[str, Tensor]] = {}
            for name in [name for name in tensors if name.startswith("optimizer.")]:
                _, index, key = name.split(".", 2)
                moments.setdefault(int(index), {})[key] = tensors.pop(name)
        except (OSError, SafetensorError, ValueError, KeyError, TypeError) as error:
            raise PerfusionRuntimeError(
                RuntimeErrorCode.INVALID_CHECKPOINT, f"{path}: not a training checkpoint ({error})"
            ) from error
        if info.get("version") != _CHECKPOINT_VERSION or info.get("run") != run:
            raise PerfusionRuntimeError(
                RuntimeErrorCode.INVALID_CHECKPOINT,
                f"{path} was made with other settings, images, covariance or base weights",
            )
        if len(losses) > steps:
            raise PerfusionRuntimeError(
                RuntimeErrorCode.INVALID_CHECKPOINT,
                f"{path} is at step {len(losses)}, past the {steps} steps asked for",
            )
        expected = {name: tuple(t.shape) for name, t in self.trainable().items()}
        expected["target_input"] = expected["superclass_input"] = (run["text_dim"],)
        if {name: tuple(t.shape) for name, t in tensors.items()} != expected:
            raise PerfusionRuntimeError(
                RuntimeErrorCode.INVALID_CHECKPOINT, f"{path}: its tensors do not fit this run"
            )
        with torch.no_grad():
            for name, tensor in self.trainable().items():
                tensor.copy_(tensors[name])
        self.target_input = tensors["target_input"].to(self.device)
        self.superclass_input = tensors["superclass_input"].to(self.device)
        self.optimizer.load_state_dict(
            {"state": moments, "param_groups": self.optimizer.state_dict()["param_groups"]}
        )
        if scaler:
            self.scaler.load_state_dict(scaler)
        self.losses = losses


def _generator(seed: int, step: int, micro: int) -> torch.Generator:
    """The generator of one micro-batch: a function of (seed, step, micro-batch) only."""
    (state,) = np.random.SeedSequence([seed, step, micro]).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(state))


@contextlib.contextmanager
def _frozen(pipe: Any) -> Iterator[None]:
    """Every parameter of the pipeline's modules without gradient; flags restored on exit."""
    parameters = [
        parameter
        for component in pipe.components.values()
        if isinstance(component, nn.Module)
        for parameter in component.parameters()
    ]
    flags = [parameter.requires_grad for parameter in parameters]
    for parameter in parameters:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in zip(parameters, flags, strict=True):
            parameter.requires_grad_(flag)


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


class _Run:
    """One run on a prepared pipeline: draws micro-batches, tracks i* and i_s, steps."""

    def __init__(
        self,
        pipe: Any,
        config: TrainingConfig,
        data: LatentImages,
        positions: Tensor,
        superclass_rows: Tensor,
        factor: Tensor,
        state: _State,
        precision: str,
    ) -> None:
        self.pipe = pipe
        self.config = config
        self.data = data
        self.positions = positions
        self.superclass_rows = superclass_rows
        self.factor = factor
        self.state = state
        self.precision = precision
        self.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.concept_set: ConceptSet | None = None
        side = data.latents.shape[-1] * pipe.vae_scale_factor
        self.time_ids = torch.tensor([[side, side, 0, 0, side, side]], dtype=torch.float32)

    def edits(self, initial: pf.Concept) -> dict[str, LayerEdit]:
        """One :class:`LayerEdit` per layer over the trainable value targets, sharing a concept
        set with the training gate (and i*, u, i_s of a resumed run)."""
        vectors = ConceptVectors.from_concept(initial, self.config.beta, self.config.tau)
        if self.state.keys is not None:  # unlocked: explicit key targets, no i_s in the edit
            vectors = replace(vectors, superclass_input=None)
        self.concept_set = ConceptSet([vectors])
        if self.state.target_input is not None:
            self._publish()
        keys = self.state.keys or {}
        return {
            path: LayerEdit(self.concept_set, v, keys.get(path))
            for path, v in self.state.values.items()
        }

    def _publish(self) -> None:
        """Hand the EMAs' i*, u = C⁻¹ i* and i_s to the concept set."""
        state = self.state
        assert self.concept_set is not None
        assert state.target_input is not None
        assert state.superclass_input is not None
        target = state.target_input.cpu()
        superclass = None if state.keys is not None else state.superclass_input.cpu()
        self.concept_set.set_vectors(
            self.concept_set.tokens[0], target, solve_gate(self.factor, target), superclass
        )

    def step(self, step: int) -> float:
        """One optimizer step over ``accumulate`` micro-batches; returns their mean loss."""
        state = self.state
        total = 0.0
        for micro in range(self.config.accumulate):
            loss = self._loss(step, micro)
            state.scaler.scale(loss / self.config.accumulate).backward()
            total += loss.item()
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.optimizer.zero_grad(set_to_none=True)
        state.losses.append(total / self.config.accumulate)
        return state.losses[-1]

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=_PRECISIONS[self.precision])

    def _loss(self, step: int, micro: int) -> Tensor:
        config, pipe = self.config, self.pipe
        generator = _generator(config.seed, step, micro)
        count = self.data.latents.shape[0]
        picks = torch.randperm(count, generator=generator).repeat(-(-config.batch // count))
        picks = picks[: config.batch]
        flips = torch.randint(2 if config.flip else 1, (config.batch,), generator=generator)
        templates = torch.randint(len(config.templates), (config.batch,), generator=generator)
        timesteps = torch.randint(
            self.scheduler.config.num_train_timesteps, (config.batch,), generator=generator
        )
        shape = (config.batch, *self.data.latents.shape[2:])
        noise = torch.randn(shape, generator=generator)

        device, dtype = pipe._execution_device, pipe.unet.dtype
        latents, weights = self.data.latents[picks, flips], self.data.weights[picks, flips]
        noise, timesteps = noise.to(device), timesteps.to(device)
        prompts = [config.templates[index].format(config.token) for index in templates.tolist()]
        with self._autocast():
            encodings, pooled = unet_conditioning(pipe, prompts)
            self._track(encodings, templates)
            extra = None
            if pooled is not None:
                time_ids = self.time_ids.to(device).repeat(config.batch, 1)
                extra = {"text_embeds": pooled, "time_ids": time_ids}
            noisy = self.scheduler.add_noise(latents, noise, timesteps)
            prediction = pipe.unet(
                noisy.to(dtype),
                timesteps,
                encoder_hidden_states=encodings.to(dtype),
                added_cond_kwargs=extra,
            ).sample
        kind = self.scheduler.config.prediction_type
        if kind == "epsilon":
            target = noise
        elif kind == "v_prediction":
            target = self.scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = latents
        error = (prediction.float() - target) ** 2 * weights
        return (error.sum((1, 2, 3)) / (weights.sum((1, 2, 3)) * error.shape[1])).mean()

    @torch.no_grad()
    def _track(self, encodings: Tensor, templates: Tensor) -> None:
        rows = encodings[torch.arange(len(templates)), self.positions[templates]]
        superclass = self.superclass_rows[templates].mean(0)
        self.state.track(rows.float().mean(0), superclass, self.config.ema_decay)
        self._publish()


# --------------------------------------------------------------------------------------------
# Checks made before the first step
# --------------------------------------------------------------------------------------------


def _precision(name: str, device: torch.device) -> str:
    if name == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if name != "fp32" and device.type != "cuda":
        raise PerfusionRuntimeError(
            RuntimeErrorCode.INVALID_TRAINING_CONFIG,
            f"{name} autocast needs a CUDA device; this pipeline runs on {device}",
        )
    return name


def _resolution(pipe: Any, requested: int | None) -> int:
    scale = pipe.vae_scale_factor
    size = pipe.unet.config.sample_size
    resolution = requested or scale * (size if isinstance(size, int) else size[0])
    if resolution % scale:
        raise PerfusionRuntimeError(
            RuntimeErrorCode.INVALID_TRAINING_CONFIG,
            f"resolution {resolution} is not a multiple of the VAE's scale factor {scale}",
        )
    return resolution


def _check_prediction_type(pipe: Any) -> None:
    kind = pipe.scheduler.config.get("prediction_type", "epsilon")
    if kind not in _PREDICTION_TYPES:
        raise PerfusionRuntimeError(
            RuntimeErrorCode.UNSUPPORTED_PIPELINE,
            f"the scheduler predicts {kind!r}; training supports {', '.join(_PREDICTION_TYPES)}",
        )


def _positions(pipe: Any, config: TrainingConfig) -> Tensor:
    """The token's position in each template's prompt, which must be the superclass word's
    position in the same template with the word."""
    tokenizer = pipe.tokenizer
    superclass_id = superclass_token_ids(pipe, config.superclass)["tokenizer"]
    extended = extended_tokenizer(tokenizer, [config.token])
    options = {"truncation": True, "max_length": tokenizer.model_max_length}
    positions = []
    for template in config.templates:
        ids = extended(template.format(config.token), **options).input_ids
        words = tokenizer(template.format(config.superclass), **options).input_ids
        found = [index for index, value in enumerate(ids) if value == len(tokenizer)]
        if len(found) != 1 or found[0] >= len(words) or words[found[0]] != superclass_id:
            raise PerfusionRuntimeError(
                RuntimeErrorCode.INVALID_TRAINING_CONFIG,
                f"template {template!r} does not hold the token and the superclass word at one "
                "position (too long, or the word runs into its neighbours)",
            )
        positions.append(found[0])
    return torch.tensor(positions)


def _initial_key_targets(pipe: Any, initial: pf.Concept) -> dict[str, np.ndarray]:
    """o_k = W_k i_s per layer of ``initial``: where learned key targets start."""
    superclass = torch.tensor(initial.superclass_input, dtype=torch.float32)
    return {
        path: (
            pipe.unet.get_submodule(path).to_k.weight.detach().float().cpu() @ superclass
        ).numpy()
        for path in initial.value_targets
    }


def _checkpoint_path(
    checkpoint_dir: str | os.PathLike[str] | None, config: TrainingConfig, resume: bool
) -> Path | None:
    if checkpoint_dir is None:
        if resume or config.checkpoint_every:
            raise PerfusionRuntimeError(
                RuntimeErrorCode.INVALID_TRAINING_CONFIG,
                "resume and checkpoint_every need a checkpoint_dir",
            )
        return None
    return Path(checkpoint_dir) / CHECKPOINT_NAME


def _run_identity(
    config: TrainingConfig, resolution: int, images: TrainingImages, initial: pf.Concept, c: Tensor
) -> dict[str, Any]:
    """What a checkpoint must share with the run that resumes it (JSON-ready)."""
    settings = asdict(config)
    for key in ("steps", "dtype", "checkpoint_every"):  # may change between sessions
        del settings[key]
    settings["resolution"] = resolution
    identity = {
        "settings": settings,
        "images": images.digest,
        "base": initial.base_fingerprint,
        "covariance": hashlib.sha256(c.double().cpu().numpy().tobytes()).hexdigest(),
        "text_dim": int(initial.target_input.shape[0]),
    }
    return json.loads(json.dumps(identity))


# --------------------------------------------------------------------------------------------
# train()
# --------------------------------------------------------------------------------------------


def train(
    pipe: Any,
    images: str | os.PathLike[str],
    config: TrainingConfig,
    *,
    masks: str | os.PathLike[str] | None = None,
    covariance: Tensor | None = None,
    captions: Sequence[str] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: Callable[[TrainingProgress], None] | None = None,
    **metadata: Any,
) -> pf.Concept:
    """Train a concept on the images in the folder ``images`` and return it (unsigned).

    ``masks``: a folder with one grayscale mask per image, same file stem, same size; the loss
    is weighted by it (white: the subject). ``covariance``: C [d, d] for the gate direction u =
    C⁻¹ i* (:func:`~perfusion_runtime.load_covariance` checks a file's text encoder); without
    it, C is estimated over ``captions`` (default: the bundled captions) once the inputs have
    passed their checks.
    ``checkpoint_dir``: where a checkpoint is written every ``config.checkpoint_every`` steps;
    with ``resume`` the run continues from it (and starts fresh when there is none yet).
    ``progress`` is called after each step. Keyword arguments are the file's descriptive
    metadata for :func:`perfusion_format.create_concept`: ``name`` (default: the superclass),
    ``author``, ``license``, ``description``, ``tags``, ``created``, ``inference_gate`` and the
    file's ``dtype``. The file's ``perfusion.training`` summary records the settings, the image
    count and ``final_loss`` (the mean loss of the last tenth of the steps).

    Everything is checked before the first step; refusals raise
    :class:`~perfusion_runtime.PerfusionRuntimeError` (INVALID_TRAINING_CONFIG, INVALID_GATE,
    NO_IMAGES, INVALID_IMAGE, MASK_MISMATCH, DUPLICATE_TOKEN, SUPERCLASS_NOT_ONE_TOKEN,
    INVALID_COVARIANCE, INVALID_CHECKPOINT, ALREADY_APPLIED, UNSUPPORTED_PIPELINE) or
    :class:`~perfusion_format.FormatError` (metadata the file cannot hold). TRAINING_DIVERGED
    stops a run whose trainable tensors stop being finite.
    """
    started = time.perf_counter()
    if covariance is not None and captions is not None:
        raise ValueError("give train() a covariance or captions to estimate one, not both")
    config.check()
    unknown = sorted(set(metadata) - _METADATA_ARGUMENTS)
    if unknown:
        raise TypeError(f"train() got unexpected keyword arguments: {', '.join(unknown)}")
    check_not_applied(pipe)
    pipeline_layout(pipe)  # UNSUPPORTED_PIPELINE before anything is read
    _check_prediction_type(pipe)
    check_token_free(pipe, config.token)
    device = pipe._execution_device
    precision = _precision(config.dtype, device)
    resolution = _resolution(pipe, config.resolution)
    positions = _positions(pipe, config)
    checkpoint = _checkpoint_path(checkpoint_dir, config, resume)
    read = read_images(images, masks, resolution, resolution // pipe.vae_scale_factor)
    c = build_covariance(pipe, captions) if covariance is None else torch.as_tensor(covariance)
    options = {"name": config.superclass, **metadata}
    initial = new_concept(  # checks the covariance and the metadata; trained from float32
        pipe,
        token=config.token,
        superclass=config.superclass,
        covariance=c,
        **{**options, "dtype": "F32"},
    )
    factor = covariance_factor(c)
    keys = None if config.lock_keys else _initial_key_targets(pipe, initial)
    state = _State(initial, config, device, fp16=precision == "fp16", key_targets=keys)
    run_identity = _run_identity(config, resolution, read, initial, c)
    if resume and checkpoint is not None and checkpoint.is_file():
        state.load(checkpoint, run_identity, config.steps)

    data = read.encode(pipe, config.batch)
    prompts = [template.format(config.superclass) for template in config.templates]
    encodings = encode_prompts(pipe, prompts)[0]
    superclass_rows = encodings[torch.arange(len(prompts)), positions].to(device)
    run = _Run(pipe, config, data, positions, superclass_rows, factor, state, precision)
    with torch.enable_grad(), _frozen(pipe), install(pipe, run.edits(initial), state.embeddings):
        for step in range(state.step, config.steps):
            loss = run.step(step)
            if not state.finite():
                raise PerfusionRuntimeError(
                    RuntimeErrorCode.TRAINING_DIVERGED,
                    f"the trainable tensors stopped being finite at step {step + 1}; "
                    "lower the learning rates",
                )
            every = config.checkpoint_every
            if checkpoint is not None and every and (step + 1) % every == 0:
                state.save(checkpoint, run_identity)
            if progress is not None:
                seconds = time.perf_counter() - started
                progress(TrainingProgress(step + 1, config.steps, loss, seconds))

    assert state.target_input is not None
    assert state.superclass_input is not None
    target = state.target_input.cpu()
    keys = state.keys
    finite = [loss for loss in state.losses[-max(1, state.step // 10) :] if math.isfinite(loss)]
    summary = {
        **{k: v for k, v in run_identity["settings"].items() if k not in _NOT_SUMMARISED},
        "steps": state.step,
        "precision": precision,
        "templates": len(config.templates),
        "images": len(read.names),
        "masks": read.masks is not None,
        "final_loss": sum(finite) / len(finite) if finite else None,
    }
    return pf.create_concept(
        token=config.token,
        superclass=config.superclass,
        family=initial.family.name,
        base_fingerprint=initial.base_fingerprint,
        embeddings={name: row.detach().cpu().numpy() for name, row in state.embeddings.items()},
        target_input=target.numpy(),
        gate_direction=solve_gate(factor, target).numpy(),
        superclass_input=state.superclass_input.cpu().numpy() if keys is None else None,
        key_targets=None
        if keys is None
        else {p: k.detach()[0].cpu().numpy() for p, k in keys.items()},
        value_targets={path: v.detach()[0].cpu().numpy() for path, v in state.values.items()},
        training_gate=(config.beta, config.tau),
        training=summary,
        **options,
    )
