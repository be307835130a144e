"""The tokenizer that knows the trigger tokens (perfusion_runtime.tokens.extended_tokenizer) is
made without copying the vocabulary: it must tokenize exactly as a deep copy with the tokens
added does, in every way a pipeline calls it, and leave the original tokenizer as it was."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from tiny_pipelines import build_clip_tokenizer, build_pipeline

import perfusion_runtime as pr
from perfusion_runtime.tokens import extended_tokenizer

TOKENS = ["<teddy>", "<teapot>", "<x-1>"]
PROMPTS = [
    "a photo of a <teddy>",
    "a <teddy> sailing in a <teapot>, at sea",
    "(<teddy>), <teapot>! <x-1>?",
    "<teddy><teapot>",
    "a <TEDDY> and a <Teapot> and <teddy",
    "  <teddy>   on a   table  ",
    "a <ti> beside a <teddy>",
    "",
    " ".join(["a red <teddy> on a wooden table, close up"] * 12),  # past 77 tokens
    "ça <teddy> über 🧸 <teapot>",
]


def reference(tokenizer: Any) -> Any:
    """What extended_tokenizer made before: a deep copy with the tokens added."""
    extended = copy.deepcopy(tokenizer)
    extended.add_tokens(TOKENS)
    return extended


def as_lists(ids: Any) -> Any:
    return ids.tolist() if isinstance(ids, torch.Tensor) else ids


@pytest.fixture(params=["sd-1 tokenizer", "sdxl tokenizer_2", "with a textual inversion"])
def tokenizer(request: pytest.FixtureRequest) -> Any:
    if request.param == "sd-1 tokenizer":
        return build_pipeline("sd-1").tokenizer
    if request.param == "sdxl tokenizer_2":
        return build_pipeline("sdxl").tokenizer_2
    with_ti = build_clip_tokenizer()
    with_ti.add_tokens(["<ti>"])  # a textual inversion loaded before the concepts
    return with_ti


def test_extension_tokenizes_like_a_deep_copy(tokenizer: Any) -> None:
    before = tokenizer.backend_tokenizer.to_str()
    length = len(tokenizer)
    extended, expected = extended_tokenizer(tokenizer, TOKENS), reference(tokenizer)
    assert extended.backend_tokenizer.to_str() == expected.backend_tokenizer.to_str()
    assert len(extended) == len(expected) == length + len(TOKENS)
    assert extended.model_max_length == expected.model_max_length == 77
    assert extended.get_vocab() == expected.get_vocab()
    assert extended.convert_tokens_to_ids(TOKENS) == list(range(length, length + len(TOKENS)))
    for prompt in PROMPTS:
        assert extended.tokenize(prompt) == expected.tokenize(prompt), prompt
        single = {"padding": "max_length", "max_length": 77, "truncation": True}
        assert extended(prompt, **single).input_ids == expected(prompt, **single).input_ids
        ids = extended(prompt).input_ids
        assert ids == expected(prompt).input_ids, prompt
        assert extended.decode(ids) == expected.decode(ids)
    for kwargs in (
        {"padding": "max_length", "max_length": 77, "truncation": True, "return_tensors": "pt"},
        {"padding": "longest", "return_tensors": "pt"},
        {"padding": "max_length", "max_length": 77, "truncation": False},  # lists: ragged
    ):
        got, want = extended(PROMPTS, **kwargs), expected(PROMPTS, **kwargs)
        for field in ("input_ids", "attention_mask"):
            assert as_lists(got[field]) == as_lists(want[field]), (field, kwargs)
    # the original is untouched: it still splits the trigger tokens
    assert tokenizer.backend_tokenizer.to_str() == before and len(tokenizer) == length
    assert len(tokenizer("<teddy>", add_special_tokens=False).input_ids) > 1


def test_apply_and_remove_switch_token_sets_without_changing_the_tokenizer() -> None:
    pipe = build_pipeline("sd-1")
    original = pipe.tokenizer
    serialized = original.backend_tokenizer.to_str()
    concepts = {
        token: pr.new_concept(
            pipe, token=token, superclass="teddy", covariance=pr.build_covariance(pipe, ["a cat"])
        )
        for token in ("<a>", "<b>")
    }
    for tokens in (["<a>"], ["<b>"], ["<a>", "<b>"], ["<b>"]):
        with pr.apply(pipe, [concepts[t] for t in tokens]):
            ids = pipe.tokenizer(" ".join(tokens)).input_ids
            assert ids[1:-1] == list(range(len(original), len(original) + len(tokens)))
        assert pipe.tokenizer is original
    assert original.backend_tokenizer.to_str() == serialized
