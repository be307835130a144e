"""Fixtures shared by every test folder."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import perfusion_format as pf

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


@pytest.fixture
def make_concept() -> ConceptFactory:
    """Build a valid concept: ``make_concept(family="sd-1", dtype="F16", seed=0, **overrides)``."""
    return build_concept


@pytest.fixture(scope="session")
def signing_key() -> pf.PrivateKey:
    """A fresh Ed25519 key for the test session."""
    return pf.PrivateKey.generate()


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """torch on one thread for a test module (``pytestmark = pytest.mark.usefixtures(...)``): a
    tiny model on several threads of a busy CPU (xdist, other jobs) is many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _load_fixture_module(name: str, path: Path) -> ModuleType:
    """The test helper file ``path`` as the plain module ``name``, the name tests import it by.
    Fixture modules are loaded and their fixtures registered here (shared by every folder)
    because a conftest.py in a test folder would clash with this file's module name
    (``from conftest import ...``)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_backends = _load_fixture_module("backends", REPO / "tests" / "registry" / "backends.py")
# The registry's real backends (documented in tests/registry/backends.py).
postgres_url = _backends.postgres_url
aws_test_environment = _backends.aws_test_environment
s3_server = _backends.s3_server
s3_endpoint = _backends.s3_endpoint
blob_store = _backends.blob_store

# A real registry server for the client's end-to-end tests (tests/client/registry_server.py).
registry_server = _load_fixture_module(
    "registry_server", REPO / "tests" / "client" / "registry_server.py"
).registry_server
