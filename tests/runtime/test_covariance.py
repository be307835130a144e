"""Input covariance files: C equals an independent sum over the encoder's outputs, round-trips
through its file with its counts, and is refused for other text encoders or widths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from concept_factory import build_concept
from perfusion_checks import covariance_tolerance
from tiny_pipelines import build_pipeline

import perfusion_format as pf
import perfusion_runtime as pr

CAPTIONS = [
    "a photo of a teddy bear",
    "a red car in the garden",
    "a small wooden house",
    "the sea at the beach with a boat sailing",
    "a cat",
]


@pytest.fixture(scope="module")
def pipe() -> Any:
    return build_pipeline("sd-1")


@pytest.fixture(scope="module")
def covariance(pipe: Any) -> pr.Covariance:
    return pr.estimate_covariance(pipe, CAPTIONS, batch_size=2)


def test_covariance_is_the_mean_outer_product_of_non_padding_encodings(
    pipe: Any, covariance: pr.Covariance
) -> None:
    tokens = pipe.tokenizer(CAPTIONS, padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        outputs = pipe.text_encoder(tokens.input_ids.to(pipe.device))[0].double().cpu()  # [B, T, d]
    mask = tokens.attention_mask.double()
    expected = torch.einsum("btd,bte,bt->de", outputs, outputs, mask) / mask.sum()
    # The encodings here come from one batch of 5, the covariance's from batches of 2 (and of
    # 32 below): float32 rounding apart, see covariance_tolerance.
    tolerance = covariance_tolerance(outputs)
    torch.testing.assert_close(covariance.matrix, expected, rtol=0, atol=tolerance)
    assert covariance.matrix.dtype == torch.float64
    assert (covariance.captions, covariance.tokens) == (len(CAPTIONS), int(mask.sum()))
    assert covariance.text_encoder is None
    torch.testing.assert_close(
        pr.build_covariance(pipe, CAPTIONS), covariance.matrix, rtol=0, atol=tolerance
    )
    # the tolerance still sees one token too many (the first padding token of the last caption)
    extra = mask.clone()
    extra[-1, int(mask[-1].sum())] = 1
    wrong = torch.einsum("btd,bte,bt->de", outputs, outputs, extra) / extra.sum()
    assert float((wrong - expected).abs().max()) > 100 * tolerance


def test_progress_reports_every_batch(pipe: Any) -> None:
    calls: list[tuple[int, int]] = []
    pr.estimate_covariance(pipe, CAPTIONS, batch_size=2, progress=lambda *a: calls.append(a))
    assert calls == [(2, 5), (4, 5), (5, 5)]
    with pytest.raises(ValueError, match="caption"):
        pr.estimate_covariance(pipe, [])


def test_file_round_trip(pipe: Any, covariance: pr.Covariance, tmp_path: Path) -> None:
    path = tmp_path / "cov.safetensors"
    pr.save_covariance(path, covariance, pipe)
    loaded = pr.load_covariance(path, pipe)
    torch.testing.assert_close(loaded.matrix, covariance.matrix.float().double())
    assert loaded.matrix.dtype == torch.float64
    assert (loaded.captions, loaded.tokens) == (covariance.captions, covariance.tokens)
    assert loaded.text_encoder == pr.text_encoder_fingerprint(pipe)
    assert pr.load_covariance(path).text_encoder == loaded.text_encoder  # no pipeline needed
    tensors = safetensors.torch.load_file(path)
    assert list(tensors) == ["covariance"] and tensors["covariance"].dtype == torch.float32
    pr.save_covariance(tmp_path / "again.safetensors", loaded, pipe)  # a loaded one saves again


def test_text_encoder_fingerprint_ignores_dtype_not_weights(pipe: Any) -> None:
    fingerprint = pr.text_encoder_fingerprint(pipe)
    assert pf.base_fingerprint([]) != fingerprint and fingerprint.startswith("sha256:")
    half = build_pipeline("sd-1")
    half.text_encoder.to(torch.float16)
    assert pr.text_encoder_fingerprint(half) == fingerprint
    other = build_pipeline("sd-1", seed=1)
    assert pr.text_encoder_fingerprint(other) != fingerprint
    # the UNet does not enter it: a covariance depends on the text encoder only
    other.text_encoder = pipe.text_encoder
    assert pr.text_encoder_fingerprint(other) == fingerprint


def test_covariance_for_other_text_encoders_is_refused(
    pipe: Any, covariance: pr.Covariance, tmp_path: Path
) -> None:
    path = tmp_path / "cov.safetensors"
    pr.save_covariance(path, covariance, pipe)
    for other, needle in (
        (build_pipeline("sd-1", seed=1), "text encoders"),
        (build_pipeline("sd-2"), "48"),
    ):
        with pytest.raises(pr.PerfusionRuntimeError) as error:
            pr.load_covariance(path, other)
        assert error.value.code == "COVARIANCE_MISMATCH"
        assert needle in error.value.message
        with pytest.raises(pr.PerfusionRuntimeError) as error:
            pr.save_covariance(tmp_path / "other.safetensors", pr.load_covariance(path), other)
        assert error.value.code == "COVARIANCE_MISMATCH"


def test_files_that_are_not_covariances_are_refused(
    pipe: Any, covariance: pr.Covariance, tmp_path: Path
) -> None:
    good = {"covariance": covariance.matrix.float()}
    metadata = {
        "perfusion.format": "perfusion-covariance",
        "perfusion.version": "1.0",
        "perfusion.captions": "5",
        "perfusion.tokens": "40",
        "perfusion.text_encoder_fingerprint": pr.text_encoder_fingerprint(pipe),
    }
    asymmetric = covariance.matrix.float().clone()
    asymmetric[0, 1] += 1
    cases: dict[str, bytes] = {
        "garbage": b"not a safetensors file",
        "concept": pf.dumps(build_concept()),
        "no-format": safetensors.torch.save(good, {**metadata, "perfusion.format": "other"}),
        "v2": safetensors.torch.save(good, {**metadata, "perfusion.version": "2.0"}),
        "two-tensors": safetensors.torch.save({**good, "x": torch.zeros(1)}, metadata),
        "no-count": safetensors.torch.save(good, {**metadata, "perfusion.tokens": "0"}),
        "bad-fingerprint": safetensors.torch.save(
            good, {**metadata, "perfusion.text_encoder_fingerprint": "sha256:x"}
        ),
        "not-square": safetensors.torch.save({"covariance": torch.zeros(3, 4)}, metadata),
        "asymmetric": safetensors.torch.save({"covariance": asymmetric}, metadata),
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(pr.PerfusionRuntimeError) as error:
            pr.load_covariance(path, pipe)
        assert error.value.code == "INVALID_COVARIANCE", name
    path = tmp_path / "ok"
    path.write_bytes(safetensors.torch.save(good, metadata))
    assert pr.load_covariance(path, pipe).tokens == 40
