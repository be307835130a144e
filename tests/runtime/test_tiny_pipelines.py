"""Smoke tests of the offline tiny pipelines in ``tests/tiny_pipelines.py``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from tiny_pipelines import (
    DEFAULT_WORDS,
    IMAGE_SIZE,
    TEST_DEVICE,
    TEXT_DIMS,
    PipelineKind,
    build_clip_tokenizer,
    build_pipeline,
    bytes_to_unicode,
    save_pipeline,
    write_clip_tokenizer,
)
from transformers import CLIPTokenizer

KINDS: tuple[PipelineKind, ...] = ("sd-1", "sd-2", "sdxl")
PROMPT = "a photo of a teddy"
# attn2 layers per kind: SD 1/2 have 2 (down) + 1 (mid) + 3 (up); SDXL has depth 2 everywhere.
ATTN2_COUNTS = {"sd-1": 6, "sd-2": 6, "sdxl": 12}


def _generate(pipe: DiffusionPipeline) -> np.ndarray:
    """A 2-step image of :data:`PROMPT` with a fixed generator."""
    return pipe(
        PROMPT,
        num_inference_steps=2,
        height=IMAGE_SIZE,
        width=IMAGE_SIZE,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images


def _own_memory(pipe: DiffusionPipeline) -> None:
    """Move every parameter and buffer of ``pipe``'s modules into memory of torch's allocator.

    ``from_pretrained`` leaves the weights where safetensors put them: views into the file's
    buffer or copies, at addresses aligned to only 4 or 16 bytes, while :func:`build_pipeline`'s
    come from torch's allocator, aligned to 64 bytes. A CPU BLAS kernel may split a product by
    its operands' alignment (an unaligned head, then the vector loop), which changes the order of
    the sums: the same float32 weights at another address then give results a rounding step
    apart, depending on the CPU model. On a 2-core AMD EPYC, SDXL's
    ``text_encoder_2.text_projection`` (a matrix-vector product on the pooled text) alone, its
    weight moved by 4 bytes, changes the image's last bits (by up to 1e-6). Copied to torch's
    allocator, both pipelines hold the same weights at the same alignment with the same strides
    and run the same kernels in the same order, so any difference left in their images is a
    real one.
    """
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            for tensor in [*component.parameters(), *component.buffers()]:
                tensor.data = tensor.data.clone()


@pytest.fixture(scope="module", params=KINDS)
def kind_and_pipe(request: pytest.FixtureRequest) -> tuple[PipelineKind, DiffusionPipeline]:
    """Each kind with its pipeline (built once per module)."""
    return request.param, build_pipeline(request.param)


def test_bytes_to_unicode_is_a_bijection_onto_printable_characters() -> None:
    mapping = bytes_to_unicode()
    assert sorted(mapping) == list(range(256))
    assert len(set(mapping.values())) == 256
    assert all(char.isprintable() and not char.isspace() for char in mapping.values())
    assert mapping[ord("a")] == "a"
    assert mapping[ord(" ")] == "Ġ"


def test_written_tokenizer_loads_and_encodes_each_word_as_one_token(tmp_path: Path) -> None:
    write_clip_tokenizer(tmp_path)
    names = {"vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"}
    assert names <= {path.name for path in tmp_path.iterdir()}
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    byte_chars = list(bytes_to_unicode().values())
    assert list(vocab)[:512] == byte_chars + [char + "</w>" for char in byte_chars]
    assert list(vocab)[-2:] == ["<|startoftext|>", "<|endoftext|>"]

    loaded = CLIPTokenizer.from_pretrained(tmp_path, local_files_only=True)
    in_memory = build_clip_tokenizer()
    assert loaded.model_max_length == 77
    assert len(loaded) == len(vocab)
    assert (loaded.bos_token_id, loaded.eos_token_id) == (len(vocab) - 2, len(vocab) - 1)
    for word in DEFAULT_WORDS:
        ids = loaded(word, add_special_tokens=False).input_ids
        assert ids == [vocab[word + "</w>"]], word
        assert in_memory(word.upper(), add_special_tokens=False).input_ids == ids, word
    prompt = "A photo of a Teddy, sitting on the beach!"
    assert loaded(prompt).input_ids == in_memory(prompt).input_ids


def test_unknown_words_fall_back_to_bytes() -> None:
    tokenizer = build_clip_tokenizer(["teddy"])
    ids = tokenizer("xyz", add_special_tokens=False).input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == ["x", "y", "z</w>"]


@pytest.mark.parametrize("words", [["teddy bear"], ["r2d2"], [""], ["teddy-bear"]])
def test_words_must_be_letters_only(tmp_path: Path, words: list[str]) -> None:
    with pytest.raises(ValueError, match="letters only"):
        write_clip_tokenizer(tmp_path, words)


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown pipeline kind"):
        build_pipeline("sd-3")  # type: ignore[arg-type]


def test_text_encoders_and_cross_attention_share_the_text_width(
    kind_and_pipe: tuple[PipelineKind, DiffusionPipeline],
) -> None:
    kind, pipe = kind_and_pipe
    encoders = [pipe.text_encoder, getattr(pipe, "text_encoder_2", None)]
    widths = [encoder.config.hidden_size for encoder in encoders if encoder is not None]
    assert sum(widths) == TEXT_DIMS[kind]
    assert pipe.unet.config.cross_attention_dim == TEXT_DIMS[kind]

    attn2 = {name: module for name, module in pipe.unet.named_modules() if name.endswith(".attn2")}
    assert len(attn2) == ATTN2_COUNTS[kind]
    assert {module.to_k.in_features for module in attn2.values()} == {TEXT_DIMS[kind]}
    assert {module.to_v.in_features for module in attn2.values()} == {TEXT_DIMS[kind]}


def test_same_seed_same_weights_other_seed_other_weights(
    kind_and_pipe: tuple[PipelineKind, DiffusionPipeline],
) -> None:
    kind, pipe = kind_and_pipe
    again = build_pipeline(kind, seed=0)
    other = build_pipeline(kind, seed=1)
    for name in ("unet", "vae", "text_encoder"):
        weights = getattr(pipe, name).state_dict()
        same = getattr(again, name).state_dict()
        assert all(torch.equal(weights[key], same[key]) for key in weights), name
    assert not torch.equal(pipe.unet.conv_in.weight, other.unet.conv_in.weight)


def test_generates_and_reloads_to_the_identical_image(
    kind_and_pipe: tuple[PipelineKind, DiffusionPipeline], tmp_path: Path
) -> None:
    _, pipe = kind_and_pipe
    image = _generate(pipe)
    assert image.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert np.isfinite(image).all()

    folder = save_pipeline(pipe, tmp_path / "pipe")
    assert folder == tmp_path / "pipe"
    assert (folder / "model_index.json").is_file()
    assert list(folder.rglob("*.safetensors"))
    assert not list(folder.rglob("*.bin"))

    reloaded = DiffusionPipeline.from_pretrained(folder, local_files_only=True).to(TEST_DEVICE)
    assert type(reloaded) is type(pipe)
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            weights, loaded = component.state_dict(), reloaded.components[name].state_dict()
            assert weights.keys() == loaded.keys(), name
            assert all(torch.equal(weights[key], loaded[key]) for key in weights), name
    _own_memory(reloaded)  # the same weights at the same alignment: see _own_memory
    reloaded.set_progress_bar_config(disable=True)
    assert np.array_equal(_generate(reloaded), image)
