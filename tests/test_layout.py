"""The dependency rules of ARCHITECTURE.md, checked on the source and on real imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

SOURCES = {
    "perfusion_format": REPO / "perfusion_format" / "src" / "perfusion_format",
    "perfusion_runtime": REPO / "runtime" / "src" / "perfusion_runtime",
    "pfx_registry": REPO / "registry" / "src" / "pfx_registry",
    "pfx": REPO / "client" / "src" / "pfx",
}
HEAVY = {"torch", "diffusers", "transformers"}
SERVER = {"fastapi", "uvicorn", "starlette", "sqlalchemy", "boto3", "botocore"}
# Top-level modules a package must not import anywhere, and those it may import only lazily
# (inside a function, never when the module loads).
FORBIDDEN = {
    "perfusion_format": HEAVY | SERVER | {"httpx", "pfx", "pfx_registry", "perfusion_runtime"},
    "perfusion_runtime": SERVER | {"httpx", "pfx", "pfx_registry"},
    "pfx_registry": HEAVY | {"pfx", "perfusion_runtime"},
    "pfx": SERVER | {"pfx_registry"},
}
LAZY_ONLY = {"pfx": HEAVY | {"perfusion_runtime"}}


def _imports(path: Path) -> list[tuple[str, bool]]:
    """``(top-level module, at module level?)`` for every absolute import in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nested = {
        id(node)
        for function in ast.walk(tree)
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
        for node in ast.walk(function)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(name.split(".")[0], id(node) not in nested) for name in names]
    return found


@pytest.mark.parametrize("package", sorted(SOURCES))
def test_dependency_arrows_point_one_way(package: str) -> None:
    files = sorted(SOURCES[package].rglob("*.py"))
    assert files
    for path in files:
        for module, at_load in _imports(path):
            assert module not in FORBIDDEN[package], f"{path}: imports {module}"
            if at_load:
                assert module not in LAZY_ONLY.get(package, set()), f"{path}: {module} at load"


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        ("perfusion_format", HEAVY | SERVER | {"httpx"}),
        ("pfx.cli", HEAVY | SERVER),
        ("pfx_registry.app", HEAVY),
    ],
)
def test_importing_does_not_load_heavy_modules(module: str, absent: set[str]) -> None:
    code = f"import sys, {module}; print(sorted(set(sys.modules) & set({sorted(absent)!r})))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_no_generic_top_level_names_reach_site_packages() -> None:
    assert {source.name for source in SOURCES.values()} == set(SOURCES)
    for source in SOURCES.values():
        siblings = [p.name for p in source.parent.iterdir() if not p.name.endswith(".egg-info")]
        assert siblings == [source.name], f"{source.parent} holds {siblings}"
