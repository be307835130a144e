"""Perfusion training on the tiny sd-1-shaped pipeline (a ``custom`` family model): the loss goes
down, only the embedding rows and value targets move, i* and i_s follow their EMAs, the file is
valid and applies, a resumed run gives the same bytes, and every bad input is refused before the
first step. Images are 32×32 PNGs drawn here; runs are a few steps of a batch of 2."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image
from safetensors import safe_open
from tiny_pipelines import TEST_DEVICE, build_pipeline
from training_images import draw_images, draw_masks

import perfusion_format as pf
import perfusion_runtime as pr
from perfusion_runtime.covariance import gate_direction
from perfusion_runtime.edit import ConceptSet, ConceptVectors, LayerEdit
from perfusion_runtime.tokens import extended_tokenizer

CAPTIONS = ["a photo of a teddy bear", "a teapot on a table", "a red car in the garden"]
CREATED = "2026-11-25T12:00:00Z"
FAST = pr.TrainingConfig(token="<teddy>", superclass="teddy", steps=3, batch=2, accumulate=2)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def base_state(pipe: Any) -> dict[str, Any]:
    """Every parameter and buffer of the pipeline's modules (copies), their requires_grad flags,
    and the identities of the objects apply() and train() swap."""
    state: dict[str, Any] = {
        "processors": {k: id(v) for k, v in pipe.unet.attn_processors.items()},
        "objects": (id(pipe.tokenizer), id(pipe.text_encoder.get_input_embeddings())),
        "patched": sorted(pipe.__dict__.keys() & {"encode_prompt", "_perfusion_handle"}),
    }
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            state[name] = {k: v.detach().clone() for k, v in component.state_dict().items()}
            state[f"{name}.flags"] = [(p.requires_grad, p.grad) for p in component.parameters()]
    return state


def assert_same_state(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert before.keys() == after.keys()
    for key, value in before.items():
        if isinstance(value, dict) and key != "processors":
            assert value.keys() == after[key].keys()
            for name, tensor in value.items():
                assert torch.equal(tensor, after[key][name]), f"{key}.{name} changed"
        else:
            assert value == after[key], key


@pytest.fixture(scope="module")
def pipe() -> Any:
    return build_pipeline("sd-1")


@pytest.fixture(scope="module")
def covariance(pipe: Any) -> torch.Tensor:
    return pr.build_covariance(pipe, CAPTIONS)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return draw_images(tmp_path_factory.mktemp("training") / "images")


@dataclass
class Trained:
    """One training run, recorded: the concept, the state of the pipeline before and after, the
    initial concept, and every call of the pipeline's encode_prompt (prompts, encodings)."""

    concept: pf.Concept
    initial: pf.Concept
    before: dict[str, Any]
    after: dict[str, Any]
    calls: list[tuple[list[str], torch.Tensor]]
    progress: list[pr.TrainingProgress]


@pytest.fixture(scope="module")
def trained(pipe: Any, covariance: torch.Tensor, images: Path) -> Trained:
    calls: list[tuple[list[str], torch.Tensor]] = []
    encode_prompt = pipe.encode_prompt

    def recording(*args: Any, **kwargs: Any) -> Any:
        outputs = encode_prompt(*args, **kwargs)
        calls.append((list(kwargs["prompt"]), outputs[0].detach().clone()))
        return outputs

    before = base_state(pipe)
    config = replace(FAST, ema_decay=0.5)
    progress: list[pr.TrainingProgress] = []
    pipe.__dict__["encode_prompt"] = recording
    try:
        concept = pr.train(
            pipe, images, config, covariance=covariance, progress=progress.append, created=CREATED
        )
    finally:
        pipe.__dict__.pop("encode_prompt", None)
    initial = pr.new_concept(pipe, token="<teddy>", superclass="teddy", covariance=covariance)
    return Trained(concept, initial, before, base_state(pipe), calls, progress)


def _ema(rows: list[torch.Tensor], decay: float) -> torch.Tensor:
    average = rows[0].double()
    for row in rows[1:]:
        average = decay * average + (1 - decay) * row.double()
    return average


# -- what training computes -------------------------------------------------------------------


def test_the_edit_is_differentiable_and_float32_under_autocast(trained: Trained) -> None:
    """With autograd on, LayerEdit.values takes the differentiable branch (same numbers as the
    fused in-place inference path) and gradients reach the value targets; scores and gates stay
    float32 under autocast."""
    concept, device = trained.concept, torch.device(TEST_DEVICE)
    vectors = ConceptVectors.from_concept(concept, beta=0.75, tau=0.1)
    concepts = ConceptSet([vectors])
    value = next(iter(concept.value_targets.values()))
    targets = torch.tensor(value[None], device=device).requires_grad_()
    edit = LayerEdit(concepts, targets)
    generator = torch.Generator().manual_seed(0)
    encodings = torch.randn(2, 7, concept.target_input.shape[0], generator=generator).to(device)
    weight = torch.randn(value.shape[0], encodings.shape[-1], generator=generator).to(device)
    with torch.no_grad():
        fused = edit.values(encodings.clone(), lambda e: e @ weight.T)
    differentiable = edit.values(encodings, lambda e: e @ weight.T)
    torch.testing.assert_close(differentiable, fused)
    differentiable.sum().backward()
    assert targets.grad is not None and targets.grad.abs().sum() > 0
    with torch.autocast(device.type, dtype=torch.bfloat16):
        inputs = concepts.inputs(encodings.clone())
    assert inputs.scores.dtype == inputs.gates.dtype == torch.float32
    torch.testing.assert_close(inputs.scores, concepts.inputs(encodings.clone()).scores)


def test_training_lowers_the_loss_on_a_fixed_batch(
    pipe: Any, covariance: torch.Tensor, images: Path
) -> None:
    """The noise-prediction loss of the applied concept (training gate) on fixed images, noise
    and timesteps is lower after 16 steps than for the concept training starts from."""
    files = sorted(images.glob("*.png"))
    pixels = torch.stack(
        [torch.from_numpy(np.asarray(Image.open(f), np.float32) / 127.5 - 1) for f in files]
    ).permute(0, 3, 1, 2)
    with torch.no_grad():
        latents = pipe.vae.encode(pixels.to(pipe.device)).latent_dist.mean
        latents = latents * pipe.vae.config.scaling_factor
    generator = torch.Generator().manual_seed(123)
    picks = torch.arange(8) % len(files)
    noise = torch.randn((8, *latents.shape[1:]), generator=generator).to(pipe.device)
    timesteps = torch.linspace(50, 950, 8).long().to(pipe.device)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)

    def loss(concept: pf.Concept) -> float:
        with torch.no_grad(), pr.apply(pipe, concept, beta=0.75, tau=0.1):
            encodings = pr.encode_prompts(pipe, ["a photo of a <teddy>"] * 8)[0].to(pipe.device)
            noisy = scheduler.add_noise(latents[picks], noise, timesteps)
            prediction = pipe.unet(noisy, timesteps, encoder_hidden_states=encodings).sample
        return float(((prediction - noise) ** 2).mean())

    initial = pr.new_concept(pipe, token="<teddy>", superclass="teddy", covariance=covariance)
    config = replace(FAST, steps=16, accumulate=1)
    concept = pr.train(pipe, images, config, covariance=covariance)
    assert loss(concept) < loss(initial) - 0.005


def test_only_the_embedding_rows_and_value_targets_change(trained: Trained) -> None:
    assert_same_state(trained.before, trained.after)  # weights bit for bit, flags, objects
    concept, initial = trained.concept, trained.initial
    assert not np.array_equal(
        concept.embeddings["text_encoder"], initial.embeddings["text_encoder"]
    )
    for path, value in concept.value_targets.items():
        assert not np.array_equal(value, initial.value_targets[path]), path
    assert concept.key_targets is None  # keys stay locked: o_k = W_k i_s, i_s in the file


def test_unlocked_keys_learn_one_key_target_per_layer(
    pipe: Any, covariance: torch.Tensor, images: Path
) -> None:
    """lock_keys=False (the paper's ablation): the file carries key targets for exactly the
    value layers instead of i_s; they start at W_k i_s and AdamW's first step moves each by the
    value targets' learning rate (|Δ + lr·wd·o_k| ≈ lr where the gradient is not zero); the
    weights stay untouched, and the concept applies."""
    before = base_state(pipe)
    config = replace(FAST, steps=1, accumulate=1, lock_keys=False)
    concept = pf.loads(pf.dumps(pr.train(pipe, images, config, covariance=covariance)))
    assert_same_state(before, base_state(pipe))
    assert concept.superclass_input is None and concept.key_targets is not None
    assert concept.key_targets.keys() == concept.value_targets.keys()
    assert concept.training["lock_keys"] is False
    initial = pr.new_concept(pipe, token="<teddy>", superclass="teddy", covariance=covariance)
    lr, decay = config.lr_values, config.weight_decay
    moved = 0
    for path, key in concept.key_targets.items():
        w_k = pipe.unet.get_submodule(path).to_k.weight.detach().double().cpu().numpy()
        start = w_k @ np.asarray(initial.superclass_input, np.float64)
        step = key - start + lr * decay * start
        changed = np.abs(key - start) > 1e-6
        sizes = np.abs(step[changed])  # lr·|g|/(|g| + ε): lr, a little less for tiny gradients
        assert sizes.max() <= lr * (1 + 1e-4) and np.median(sizes) == pytest.approx(lr, rel=1e-2)
        moved += int(changed.sum())
    assert moved > 0
    with pr.apply(pipe, concept):
        image = pipe("a photo of a <teddy>", num_inference_steps=2, output_type="np").images
    assert np.isfinite(image).all()


def test_the_superclass_input_is_fixed_with_one_template(
    pipe: Any, covariance: torch.Tensor, images: Path
) -> None:
    """i_s does not depend on anything trained: with one template it stays exactly the
    superclass word's encoding there, as new_concept computes it."""
    config = replace(FAST, steps=2, templates=("a photo of a {}",))
    concept = pr.train(pipe, images, config, covariance=covariance)
    initial = pr.new_concept(pipe, token="<teddy>", superclass="teddy", covariance=covariance)
    np.testing.assert_array_equal(concept.superclass_input, initial.superclass_input)


def test_target_and_superclass_inputs_follow_their_emas(pipe: Any, trained: Trained) -> None:
    """i* is the EMA (decay 0.5 here) over forward passes of the batch mean of the encodings at
    the token's position; i_s the same over the prompts with the superclass word."""
    tokenizer = extended_tokenizer(pipe.tokenizer, ["<teddy>"])
    token_id = len(pipe.tokenizer)
    targets, superclass = [], []
    for prompts, encodings in trained.calls:
        if "<teddy>" not in prompts[0]:
            continue
        positions = [tokenizer(p).input_ids.index(token_id) for p in prompts]
        targets.append(encodings[torch.arange(len(prompts)), positions].float().mean(0).cpu())
        words = pr.encode_prompts(pipe, [p.replace("<teddy>", "teddy") for p in prompts])[0]
        superclass.append(words[torch.arange(len(prompts)), positions].mean(0))
    assert len(targets) == FAST.steps * FAST.accumulate
    np.testing.assert_allclose(
        trained.concept.target_input, _ema(targets, 0.5).numpy(), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        trained.concept.superclass_input, _ema(superclass, 0.5).numpy(), rtol=1e-5, atol=1e-6
    )


def test_the_file_is_valid_and_applies(
    pipe: Any, covariance: torch.Tensor, trained: Trained
) -> None:
    concept = pf.loads(pf.dumps(trained.concept))
    assert (concept.token, concept.superclass, concept.name) == ("<teddy>", "teddy", "teddy")
    assert concept.training_gate == pf.Gate(0.75, 0.1)
    np.testing.assert_allclose(
        concept.gate_direction,
        gate_direction(covariance, torch.tensor(concept.target_input)).numpy(),
        rtol=1e-6,
    )
    summary = concept.training
    assert summary["steps"] == 3
    assert (summary["batch"], summary["accumulate"], summary["images"]) == (2, 2, 3)
    assert (summary["lr_values"], summary["lr_embedding"]) == (0.03, 0.006)
    assert summary["final_loss"] == pytest.approx(trained.progress[-1].loss)
    assert [p.step for p in trained.progress] == [1, 2, 3]
    with pr.apply(pipe, concept):
        image = pipe(
            "a photo of a <teddy>", num_inference_steps=2, height=32, width=32, output_type="np"
        ).images
    assert np.isfinite(image).all()


@pytest.mark.parametrize("kind", ["sd-2", "sdxl"])
def test_v_prediction_and_two_text_encoders(kind: str, images: Path) -> None:
    pipe = build_pipeline(kind)
    covariance = pr.build_covariance(pipe, CAPTIONS)
    concept = pr.train(pipe, images, replace(FAST, steps=1), covariance=covariance)
    initial = pr.new_concept(pipe, token="<teddy>", superclass="teddy", covariance=covariance)
    for encoder, row in initial.embeddings.items():
        assert not np.array_equal(concept.embeddings[encoder], row), encoder
    with pr.apply(pipe, pf.loads(pf.dumps(concept))):
        pass


def test_masks_weight_the_loss(
    pipe: Any, covariance: torch.Tensor, images: Path, tmp_path: Path
) -> None:
    """White masks weigh like no masks; masks that keep a corner train something else."""
    config = replace(FAST, steps=1)

    def run(masks: Path | None) -> pf.Concept:
        return pr.train(pipe, images, config, masks=masks, covariance=covariance)

    plain, white = run(None), run(draw_masks(tmp_path / "white", images))
    corner = run(draw_masks(tmp_path / "corner", images, box=(0, 0, 11, 11)))
    assert white.training["masks"] and not plain.training["masks"]
    for path, value in plain.value_targets.items():
        np.testing.assert_array_equal(white.value_targets[path], value)
    assert any(
        not np.allclose(corner.value_targets[path], value)
        for path, value in plain.value_targets.items()
    )


# -- checkpoints ------------------------------------------------------------------------------


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("lock_keys", [True, False], ids=["locked", "learned-keys"])
def test_a_resumed_run_gives_the_same_bytes(
    pipe: Any, covariance: torch.Tensor, images: Path, tmp_path: Path, lock_keys: bool
) -> None:
    config = replace(FAST, steps=4, checkpoint_every=2, lock_keys=lock_keys)
    whole = pr.train(
        pipe, images, replace(config, checkpoint_every=0), covariance=covariance, created=CREATED
    )

    def interrupt(report: pr.TrainingProgress) -> None:
        if report.step == 3:
            raise Interrupted

    before = base_state(pipe)
    checkpoints = tmp_path / "checkpoints"
    with pytest.raises(Interrupted):
        pr.train(
            pipe,
            images,
            config,
            covariance=covariance,
            checkpoint_dir=checkpoints,
            progress=interrupt,
        )
    assert_same_state(before, base_state(pipe))  # an interrupted run leaves the pipeline as it was
    with safe_open(checkpoints / pr.training.CHECKPOINT_NAME, framework="pt") as checkpoint:
        state = json.loads(checkpoint.metadata()["perfusion_runtime.training_checkpoint"])
        assert len(state["losses"]) == 2  # written at step 2, not at step 3
        names = set(checkpoint.keys())
        assert {"embedding.text_encoder", "target_input", "superclass_input"} <= names
        assert any(name.startswith("key_target.") for name in names) is not lock_keys
    steps: list[int] = []
    resumed = pr.train(
        pipe,
        images,
        config,
        covariance=covariance,
        checkpoint_dir=checkpoints,
        resume=True,
        progress=lambda report: steps.append(report.step),
        created=CREATED,
    )
    assert steps == [3, 4]
    assert pf.dumps(resumed) == pf.dumps(whole)


# -- refusals ---------------------------------------------------------------------------------


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _case(name: str, root: Path, images: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(arguments of train() that break one rule, changes to the fast config)."""
    if name == "missing-folder":
        return {"images": root / "nowhere"}, {}
    if name == "empty-folder":
        (root / "empty").mkdir()
        _write(root / "empty" / "notes.txt", b"not an image")
        return {"images": root / "empty"}, {}
    copy = root / "images"
    shutil.copytree(images, copy)
    if name == "unreadable-image":
        _write(copy / "broken.png", b"\x89PNG\r\n\x1a\nthis is not the rest of a png")
    elif name == "tiny-image":
        draw_images(root / "tiny", count=1, size=(7, 40))  # 32 px training needs ≥ 8 px
        shutil.copy(root / "tiny" / "teddy0.png", copy / "small.png")
    elif name.startswith("mask-"):
        masks = draw_masks(root / "masks", copy)
        if name == "mask-missing":
            (masks / "teddy1.png").unlink()
        elif name == "mask-extra":
            shutil.copy(masks / "teddy1.png", masks / "other.png")
        elif name == "mask-size":
            Image.new("L", (32, 30), 255).save(masks / "teddy1.png")
        else:
            Image.new("L", (32, 32), 0).save(masks / "teddy1.png")
        return {"images": copy, "masks": masks}, {}
    elif name == "corrupt-checkpoint":
        _write(root / "checkpoints" / "checkpoint.safetensors", b"\x08" + b"\x00" * 15)
        return {"images": copy, "checkpoint_dir": root / "checkpoints", "resume": True}, {}
    changes: dict[str, Any] = {
        "in-vocabulary": {"token": "teapot"},
        "superclass-split": {"superclass": "teddybear"},
        "no-steps": {"steps": 0},
        "template": {"templates": ("a photo of a thing",)},
        "fp16-on-cpu": {"dtype": "fp16"},
        "gate": {"tau": 0.0},
        "checkpoint-without-folder": {"checkpoint_every": 1},
    }.get(name, {})
    return {"images": copy}, changes


REFUSALS = [
    ("missing-folder", "NO_IMAGES"),
    ("empty-folder", "NO_IMAGES"),
    ("unreadable-image", "INVALID_IMAGE"),
    ("tiny-image", "INVALID_IMAGE"),
    ("mask-missing", "MASK_MISMATCH"),
    ("mask-extra", "MASK_MISMATCH"),
    ("mask-size", "MASK_MISMATCH"),
    ("mask-black", "MASK_MISMATCH"),
    ("in-vocabulary", "DUPLICATE_TOKEN"),
    ("superclass-split", "SUPERCLASS_NOT_ONE_TOKEN"),
    ("no-steps", "INVALID_TRAINING_CONFIG"),
    ("template", "INVALID_TRAINING_CONFIG"),
    ("fp16-on-cpu", "INVALID_TRAINING_CONFIG"),
    ("gate", "INVALID_GATE"),
    ("checkpoint-without-folder", "INVALID_TRAINING_CONFIG"),
    ("corrupt-checkpoint", "INVALID_CHECKPOINT"),
    ("covariance-shape", "INVALID_COVARIANCE"),
]


@pytest.mark.parametrize(("name", "code"), REFUSALS)
def test_bad_input_is_refused_before_the_first_step(
    pipe: Any,
    covariance: torch.Tensor,
    images: Path,
    tmp_path: Path,
    name: str,
    code: str,
) -> None:
    arguments, changes = _case(name, tmp_path, images)
    if name == "fp16-on-cpu" and TEST_DEVICE != "cpu":  # the refusal is a CPU pipeline's
        pipe = build_pipeline("sd-1").to("cpu")
    if name == "covariance-shape":
        covariance = torch.eye(covariance.shape[0] + 1, dtype=torch.float64)
    steps: list[pr.TrainingProgress] = []
    before = base_state(pipe)
    with pytest.raises(pf.PerfusionError) as raised:
        pr.train(
            pipe,
            config=replace(FAST, **changes),
            covariance=covariance,
            progress=steps.append,
            **arguments,
        )
    assert raised.value.code == code, raised.value.message
    assert "\n" not in raised.value.message
    assert steps == []
    assert_same_state(before, base_state(pipe))


def test_a_checkpoint_of_another_run_is_refused(
    pipe: Any, covariance: torch.Tensor, images: Path, tmp_path: Path
) -> None:
    config = replace(FAST, steps=1, checkpoint_every=1)
    pr.train(pipe, images, config, covariance=covariance, checkpoint_dir=tmp_path)
    steps: list[pr.TrainingProgress] = []
    for other in (replace(config, seed=1), replace(config, steps=2, lr_values=0.1)):
        with pytest.raises(pr.PerfusionRuntimeError) as raised:
            pr.train(
                pipe,
                images,
                other,
                covariance=covariance,
                checkpoint_dir=tmp_path,
                resume=True,
                progress=steps.append,
            )
        assert raised.value.code == "INVALID_CHECKPOINT"
    assert steps == []


def test_a_pipeline_with_concepts_applied_is_refused(
    pipe: Any, covariance: torch.Tensor, images: Path, trained: Trained
) -> None:
    with pr.apply(pipe, trained.concept), pytest.raises(pr.PerfusionRuntimeError) as raised:
        pr.train(pipe, images, replace(FAST, token="<other>"), covariance=covariance)
    assert raised.value.code == "ALREADY_APPLIED"


def test_unknown_metadata_is_a_type_error(
    pipe: Any, covariance: torch.Tensor, images: Path
) -> None:
    with pytest.raises(TypeError, match="template"):
        pr.train(pipe, images, FAST, covariance=covariance, template="a {}")
