"""Benchmark the concept file format: sizes per family and dtype, sizes beside other methods, and
the time to load, validate and verify a file. Prints markdown tables (``--json``: the numbers).

    python -m bench.format [--rounds N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from hashlib import sha256
from typing import Any

import numpy as np
import safetensors
import safetensors.numpy

import perfusion_format as pf

from .common import cpu_model, machine_line, print_table

FAMILIES = ("sd-1", "sd-2", "sdxl")
DTYPES: tuple[pf.DType, ...] = ("F32", "F16", "BF16")
#: Table 1's fields in column order ("explicit": bytes with explicit key targets; "target": KiB).
SIZE_FIELDS = ("family", "dtype", "bytes", "kib", "header", "tensors", "explicit", "target", "met")
SIZE_HEADERS = (
    "family",
    "dtype",
    "file bytes",
    "KiB",
    "header B",
    "tensor B",
    "explicit keys",
    "target (met?)",
)
#: The issue's size targets, in KiB (1024 bytes), for whole files with full metadata.
TARGETS_KIB = {("sd-1", "F32"): 68, ("sd-1", "F16"): 36, ("sdxl", "F16"): 200}
#: Published UNet parameter counts (diffusers configs of SD 1.5, SD 2.1 and SDXL 1.0 base).
UNET_PARAMS = {"sd-1": 859_520_964, "sd-2": 865_910_724, "sdxl": 2_567_463_684}
#: Custom Diffusion's paper quotes 75 MB per concept for SD 1.x.
CUSTOM_DIFFUSION_PAPER_BYTES = 75e6
TARGET_TEXT = {None: "—", True: "≤ {} KiB: met", False: "≤ {} KiB: MISSED"}
KEY = pf.PrivateKey.generate()


def build(family: str, dtype: pf.DType, *, explicit_keys: bool = False) -> pf.Concept:
    """A realistic, signed concept: seeded random values, full metadata, one signature."""
    spec = pf.get_family(family)
    assert spec.layers is not None
    assert spec.text_dim is not None
    rng = np.random.default_rng(20230807)
    d = spec.text_dim
    target = rng.normal(size=d).astype(np.float32)
    direction = target + 0.5 * rng.normal(size=d).astype(np.float32)
    if float(direction @ target) <= 0:
        direction = -direction
    superclass = rng.normal(size=d).astype(np.float32)
    keys = {path: rng.normal(size=m).astype(np.float32) for path, m in spec.layers}
    concept = pf.create_concept(
        name="Teddy the bear",
        token="<teddy>",
        superclass="teddy",
        family=family,
        base_fingerprint="sha256:" + sha256(family.encode()).hexdigest(),
        embeddings={enc: 0.02 * rng.normal(size=(1, w)) for enc, w in spec.text_encoders},
        target_input=target,
        gate_direction=direction,
        value_targets={path: rng.normal(size=m) for path, m in spec.layers},
        superclass_input=None if explicit_keys else superclass,
        key_targets=keys if explicit_keys else None,
        dtype=dtype,
        created="2024-05-01T12:00:00Z",
        author="Ada Example <ada@example.org>",
        license="CC-BY-4.0",
        description="A worn brown teddy bear with a red bow, photographed indoors and outdoors.",
        tags=("toy", "teddy-bear", "plush"),
        training={
            "steps": 400,
            "batch_size": 4,
            "gradient_accumulation": 4,
            "lr_values": 0.03,
            "lr_embedding": 0.006,
            "images": 6,
            "resolution": 1024 if family == "sdxl" else 512,
            "seed": 1234,
            "beta": 0.75,
            "tau": 0.1,
            "base_model": {
                "sd-1": "stable-diffusion-v1-5/stable-diffusion-v1-5",
                "sd-2": "stabilityai/stable-diffusion-2-1",
                "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
            }[family],
        },
    )
    return pf.sign(concept, KEY)


def human(n: float) -> str:
    """Bytes in binary units: B, KiB, MiB, GiB."""
    for unit in ("B", "KiB", "MiB"):
        if abs(n) < 1024:
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.2f} GiB"


def sizes() -> list[dict[str, Any]]:
    """Table 1: whole-file sizes, key-locked and with explicit key targets."""
    rows = []
    for family in FAMILIES:
        for dtype in DTYPES:
            report = pf.size_report(build(family, dtype))
            explicit = len(pf.dumps(build(family, dtype, explicit_keys=True)))
            target = TARGETS_KIB.get((family, dtype))
            met = None if target is None else report.total <= target * 1024
            kib = round(report.total / 1024, 1)
            values = (family, dtype, report.total, kib, report.header, report.tensors, explicit)
            rows.append(dict(zip(SIZE_FIELDS, (*values, target, met), strict=True)))
    return rows


def others(perfusion_f16: dict[str, int]) -> list[dict[str, Any]]:
    """Table 2: bytes per concept of other methods, computed from the family layer tables.

    With Σm over the attn2 layers, d the text width and 16 transformer blocks for SD (70 SDXL):
    - paper's figure: every K and V target in fp32 = 2·Σm·4 B;
    - LoRA rank r, fp16, on attn1 q/k/v/out (m×m each) and attn2 q, out (m×m) and k, v (d→m):
      r·(in+out) params per Linear, so per block r·(4·2m + 2·2m + 2·(d+m)) = r·(14m + 2d)
      (attn1 sits at the attn2 path with "attn1", the same width m);
    - Custom Diffusion: the full K and V of every attn2 in fp32 = 2·Σm·d·4 B;
    - DreamBooth: the whole UNet in fp16 = published parameter count · 2 B.
    """
    widths = {f: [m for _, m in pf.get_family(f).layers or ()] for f in FAMILIES}
    dims = {f: pf.get_family(f).text_dim or 0 for f in FAMILIES}
    lora = {
        r: {f: 2 * r * sum(14 * m + 2 * dims[f] for m in widths[f]) for f in FAMILIES}
        for r in (4, 32)
    }
    paper = {f: 2 * sum(widths[f]) * 4 for f in FAMILIES}
    custom = {f: 2 * sum(widths[f]) * dims[f] * 4 for f in FAMILIES}
    rows = [
        ("Perfusion (this format, fp16, key-locked)", perfusion_f16),
        ("Perfusion, paper's figure (all K, V fp32)", paper),
        ("LoRA rank 4, fp16, attn1+attn2", lora[4]),
        ("LoRA rank 32, fp16, attn1+attn2", lora[32]),
        ("Custom Diffusion (attn2 K, V, fp32)", custom),
        ("DreamBooth (whole UNet, fp16)", {f: UNET_PARAMS[f] * 2 for f in FAMILIES}),
    ]
    return [{"method": method, "bytes": values} for method, values in rows]


def timings(family: str, rounds: int) -> dict[str, dict[str, float]]:
    """Table 3: interleaved timings (A, B, C, D, A, …) of four ways to read the same bytes."""
    data = pf.dumps(build(family, "F16"))
    public = KEY.public_key
    cases: dict[str, Callable[[], object]] = {
        "loads + verify": lambda: pf.verify(pf.loads(data), [public]),
        "loads": lambda: pf.loads(data),
        "safetensors.numpy.load": lambda: safetensors.numpy.load(data),
        "safetensors.numpy.load + sha256": lambda: (safetensors.numpy.load(data), sha256(data)),
    }
    samples: dict[str, list[int]] = {name: [] for name in cases}
    warm_up = max(rounds // 10, 20)
    for index in range(warm_up + rounds):
        for name, run in cases.items():
            start = time.perf_counter_ns()
            run()
            elapsed = time.perf_counter_ns() - start
            if index >= warm_up:
                samples[name].append(elapsed)
    base = float(np.median(samples["safetensors.numpy.load"]))
    return {
        name: {
            "median_us": float(np.median(values)) / 1e3,
            "p90_us": float(np.percentile(values, 90)) / 1e3,
            "ratio": float(np.median(values)) / base,
            "bytes": len(data),
        }
        for name, values in samples.items()
    }


def machine() -> dict[str, str]:
    """Where the numbers were taken."""
    return {
        "machine": f"{platform.machine()} {cpu_model()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "safetensors": safetensors.__version__,
    }


def main() -> None:
    """Measure everything, then print markdown tables or (``--json``) one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000, help="timed rounds per case")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args()
    table1 = sizes()
    f16 = {row["family"]: row["bytes"] for row in table1 if row["dtype"] == "F16"}
    table2 = others(f16)
    table3 = {family: timings(family, args.rounds) for family in ("sd-1", "sdxl")}
    if args.json:
        everything = {"machine": machine(), "sizes": table1, "others": table2, "load": table3}
        print(json.dumps(everything, indent=2))
        return
    print(machine_line(machine()))
    print_table(
        "File size per family and dtype, whole file with full metadata and one signature",
        SIZE_HEADERS,
        [
            (*[r[k] for k in SIZE_FIELDS[:7]], TARGET_TEXT[r["met"]].format(r["target"]))
            for r in table1
        ],
        left=2,
    )
    print_table(
        "Beside other personalisation methods (bytes per concept; × Perfusion fp16)",
        ("method", *FAMILIES),
        [(r["method"], *(cell(r["bytes"][f], f16[f]) for f in FAMILIES)) for r in table2],
        left=1,
    )
    custom = next(r for r in table2 if r["method"].startswith("Custom"))["bytes"]["sd-1"]
    print(
        "\nΣm = Σ of attn2 widths m_ℓ, d = text width. Paper's figure: 2·Σm·4 B. LoRA rank r on"
        " attn1 q/k/v/out (m→m) and attn2 q/out (m→m), k/v (d→m), r·(in+out) params per Linear:"
        " r·Σ(14m + 2d) params · 2 B. Custom Diffusion: 2·Σm·d·4 B; for SD 1.x that is"
        f" {custom / 1e6:.1f} MB ({human(custom)}), within"
        f" {abs(custom / CUSTOM_DIFFUSION_PAPER_BYTES - 1):.0%} of the paper's 75 MB. DreamBooth:"
        " published UNet parameter counts (SD 1.x 859,520,964; SD 2.x 865,910,724; SDXL"
        " 2,567,463,684) · 2 B. Perfusion: measured in the table above."
    )
    for family, rows in table3.items():
        print_table(
            f"Load + validate + verify, one {family} fp16 file ({rows['loads']['bytes']:,} B)"
            f" with one signature, {args.rounds:,} interleaved rounds",
            ("case", "median µs", "p90 µs", "× bare safetensors"),
            [
                (k, f"{t['median_us']:,.1f}", f"{t['p90_us']:,.1f}", f"{t['ratio']:.2f}")
                for k, t in rows.items()
            ],
            left=1,
        )


def cell(size: float, perfusion: float) -> str:
    """A size in human units with its ratio to Perfusion's."""
    return f"{human(size)} (×{size / perfusion:,.1f})"


if __name__ == "__main__":
    main()
