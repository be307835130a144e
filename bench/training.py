"""Benchmark Perfusion training (:func:`perfusion_runtime.train`) on the CPU or a GPU: seconds
per optimizer step and peak memory, for the tiny test pipelines and an SD-1.5-shaped pipeline
with random weights. Prints a markdown table (``--json``: the numbers).

    python -m bench.training [--quick] [--json] [--device cuda [--precision bf16]]

Each case runs in a process of its own, so its peak resident memory (``ru_maxrss``) is its own.
The SD-1.5-shaped pipeline is ``bench.runtime``'s: SD 1.5's UNet (859,520,964 parameters, fp32),
a 12-layer CLIP text encoder 768 wide (gradients reach the token embedding through all of it),
and a small VAE that halves the image side, so 128 px images give the 64 × 64 latents SD 1.5
has at 512 px — the UNet's cost per step is SD 1.5's at 512². Images are drawn here; the
covariance comes from 64 of the bundled captions (setup, not timed per step). Step 1 includes
reading and encoding the images; the table's step time is the median of the later steps.
On a GPU the pipeline's weights stay fp32 (as in training) and ``--precision`` is the training
config's autocast ``dtype`` (``auto``: bf16 where the GPU has it); one more case runs there, the
SD-1.5-shaped pipeline at the paper's batch (4 × 4 images per step).
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers

import perfusion_runtime as pr
from tests.tiny_pipelines import build_pipeline as tiny_pipeline
from tests.training_images import draw_images

from .common import REPO, command, machine_line, print_table
from .runtime import build_pipeline as sd15_pipeline
from .runtime import machine

#: name → (resolution, batch, accumulate, steps, quick steps)
CASES: dict[str, tuple[int, int, int, int, int]] = {
    "tiny sd-1": (32, 4, 4, 6, 3),
    "tiny sdxl": (32, 4, 4, 6, 3),
    "SD 1.5 shape": (128, 1, 1, 3, 2),
}
#: Cases only a GPU runs in reasonable time.
GPU_CASES: dict[str, tuple[int, int, int, int, int]] = {
    "SD 1.5 shape, paper batch": (128, 4, 4, 6, 3),
}


def _rss_mib() -> float:
    """This process's resident memory now, MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_token_word(tokenizer: Any) -> str:
    """A word of three letters or more that ``tokenizer`` reads as one token (the synthetic
    vocabulary of the SD-1.5-shaped pipeline has no real words)."""
    words = (token.removesuffix("</w>") for token in sorted(tokenizer.get_vocab()))
    for word in words:
        if len(word) >= 3 and word.isalpha() and len(tokenizer.tokenize(word)) == 1:
            return word
    raise SystemExit("no one-token word in the tokenizer's vocabulary")


def run_case(name: str, quick: bool, device: str, precision: str) -> dict[str, Any]:
    """Train one case in this process on ``device`` with autocast ``precision``, measure it."""
    resolution, batch, accumulate, steps, quick_steps = {**CASES, **GPU_CASES}[name]
    steps = quick_steps if quick else steps
    started = time.perf_counter()
    if name.startswith("SD 1.5 shape"):
        pipe = sd15_pipeline(text_layers=12)
    else:
        pipe = tiny_pipeline("sdxl" if "sdxl" in name else "sd-1")
    pipe.to(device)
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    covariance = pr.build_covariance(pipe, pr.default_captions()[:64])
    covariance_s = time.perf_counter() - started
    rss_before = _rss_mib()
    reports: list[pr.TrainingProgress] = []
    with tempfile.TemporaryDirectory() as folder:
        images = draw_images(Path(folder), count=4, size=(resolution, resolution))
        config = pr.TrainingConfig(
            token="<thing>",
            superclass=one_token_word(pipe.tokenizer),
            steps=steps,
            batch=batch,
            accumulate=accumulate,
            resolution=resolution,
            dtype=precision,
        )
        started = time.perf_counter()
        concept = pr.train(pipe, images, config, covariance=covariance, progress=reports.append)
        total_s = time.perf_counter() - started
    seconds = [report.seconds for report in reports]
    step_s = statistics.median(b - a for a, b in itertools.pairwise(seconds))
    return {
        "case": name,
        "resolution": resolution,
        "latent": resolution // pipe.vae_scale_factor,
        "batch": batch,
        "accumulate": accumulate,
        "steps": steps,
        "unet_parameters": sum(p.numel() for p in pipe.unet.parameters()),
        "build_s": build_s,
        "covariance_s": covariance_s,
        "first_step_s": seconds[0],
        "step_s": step_s,
        "image_s": step_s / (batch * accumulate),
        "train_s": total_s,
        "rss_before_mib": rss_before,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mib": (
            torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_initialized() else None
        ),
        "precision": concept.training["precision"],
        "final_loss": reports[-1].loss,
    }


def report(results: dict[str, Any]) -> None:
    """Print the markdown table."""
    print(f"`{results['command']}`\n")
    print(machine_line(results["machine"]))
    rows = [
        (
            case["case"],
            f"{case['resolution']} px → {case['latent']}²",
            f"{case['batch']} × {case['accumulate']}",
            case["steps"],
            f"{case['first_step_s']:.2f}",
            f"{case['step_s']:.2f}",
            f"{case['image_s']:.3f}",
            f"{case['rss_before_mib']:,.0f}",
            f"{case['peak_rss_mib']:,.0f}",
            "—" if case["peak_gpu_mib"] is None else f"{case['peak_gpu_mib']:,.0f}",
        )
        for case in results["cases"]
    ]
    precisions = ", ".join(sorted({case["precision"] for case in results["cases"]}))
    print_table(
        f"Training on {results['device']} ({precisions})",
        (
            "pipeline",
            "images → latents",
            "batch × accumulate",
            "steps",
            "step 1 s (with setup)",
            "s / step",
            "s / image",
            "RSS before, MiB",
            "peak RSS, MiB",
            "peak GPU memory, MiB",
        ),
        rows,
        left=3,
    )


def main() -> None:
    """Run every case in a subprocess; print the table or one JSON object."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps: a smoke run")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    parser.add_argument("--device", default="cpu", help="where to train (cpu, cuda)")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "fp16", "bf16"),
        default="auto",
        help="the training config's dtype (autocast on CUDA)",
    )
    parser.add_argument("--case", choices=sorted({**CASES, **GPU_CASES}), help=argparse.SUPPRESS)
    args = parser.parse_args()
    diffusers.utils.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    if args.case:
        print(json.dumps(run_case(args.case, args.quick, args.device, args.precision)))
        return
    started = time.perf_counter()
    cases = []
    names = [*CASES, *(GPU_CASES if args.device.startswith("cuda") else ())]
    for name in names:
        arguments = [sys.executable, "-m", __spec__.name, "--case", name] + ["--quick"] * args.quick
        arguments += ["--device", args.device, "--precision", args.precision]
        completed = subprocess.run(arguments, capture_output=True, text=True, check=True, cwd=REPO)
        cases.append(json.loads(completed.stdout.strip().splitlines()[-1]))
    results = {
        "command": command(),
        "machine": machine(),
        "device": args.device,
        "cases": cases,
        "total_s": time.perf_counter() - started,
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    report(results)
    print(f"\nTotal run time {results['total_s']:.0f} s.")


if __name__ == "__main__":
    main()
