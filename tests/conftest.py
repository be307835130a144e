"""Fixtures shared by every test folder."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from concept_factory import REPO, ConceptFactory, build_concept

import perfusion_format as pf


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


def _registry_installed() -> bool:
    """Whether ``pfx_registry`` imports: the registry's and the client's fixtures need it; the
    format's and the runtime's tests do not (a GPU machine runs tests/runtime without it)."""
    try:
        import pfx_registry  # noqa: F401
    except ImportError:
        return False
    return True


if _registry_installed():
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

    # OCI registries nobody here wrote: the CNCF distribution registry (tests/oci_registries.py).
    _oci_registries = _load_fixture_module("oci_registries", REPO / "tests" / "oci_registries.py")
    distribution_registry = _oci_registries.distribution_registry
    distribution_registry_with_auth = _oci_registries.distribution_registry_with_auth
