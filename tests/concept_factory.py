"""Valid concepts for tests, with no fixtures and no test backends attached: ``build_concept``
(a random unsigned concept of a family), ``VECTORS`` (the spec's test vectors, spec/vectors) and
``REPO`` (the repository root).

Kept out of tests/conftest.py so that a test folder can import them without loading what that
file registers (the registry's PostgreSQL and S3 backends): the runtime's tests run on a GPU
machine without the registry installed, under ``pytest --noconftest``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import perfusion_format as pf

__all__ = ["REPO", "VECTORS", "ConceptFactory", "build_concept"]

REPO = Path(__file__).resolve().parents[1]
VECTORS = REPO / "spec" / "vectors"

ConceptFactory = Callable[..., pf.Concept]


def build_concept(
    family: str = "sd-1", dtype: pf.DType = "F16", seed: int = 0, **overrides: Any
) -> pf.Concept:
    """A valid unsigned concept with random values for ``family``; keyword arguments override
    any argument of :func:`perfusion_format.create_concept`."""
    spec = pf.get_family(family)
    rng = np.random.default_rng(seed)
    d = spec.text_dim
    target = rng.standard_normal(d)
    arguments: dict[str, Any] = {
        "name": "Teddy",
        "token": "<teddy>",
        "superclass": "teddy",
        "family": family,
        "base_fingerprint": "sha256:" + "0" * 64,
        "embeddings": {name: rng.standard_normal((1, w)) for name, w in spec.text_encoders},
        "target_input": target,
        "gate_direction": target * 0.5,
        "superclass_input": rng.standard_normal(d),
        "value_targets": {path: rng.standard_normal(w) for path, w in spec.layers or ()},
        "dtype": dtype,
        "created": "2026-11-25T12:00:00Z",
    }
    arguments.update(overrides)
    return pf.create_concept(**arguments)
