"""Running ``pfx`` in tests: in this process through ``pfx.cli.main`` (fixture ``cli``), or as
the installed console script in a subprocess (fixture ``pfx``), so exit codes and the absence of
tracebacks are exactly what a user sees.

Fixture ``pfx_home`` gives a test a configuration and a cache folder of its own and clears the
user's registry, token and offline settings; ``alice`` makes pfx speak to the test registry as a
new user (:func:`speak_as` switches users); ``signer`` is a key pair on disk. ``concept_file`` and
``key_pair`` write what pfx reads; ``cache_files`` lists what a cache holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from concept_factory import build_concept
from registry_server import Account, RegistryServer

import perfusion_format as pf
from pfx.cli import main

PFX = Path(sys.executable).with_name("pfx")


@dataclass(frozen=True)
class Run:
    """The outcome of one pfx invocation."""

    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """stdout parsed as the one JSON object it must be."""
        return json.loads(self.stdout)

    def assert_error(self, code: str, exit_code: int) -> None:
        """Failed with ``code``: exactly one ``error[CODE]: …`` line on stderr, no traceback."""
        assert self.exit_code == exit_code, (self.stdout, self.stderr)
        assert self.stderr.startswith(f"error[{code}]: "), self.stderr
        assert self.stderr.count("\n") == 1
        assert "Traceback" not in self.stderr + self.stdout


Runner = Callable[..., Run]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Runner:
    """Run ``pfx ARGS…`` in this process through ``pfx.cli.main``."""

    def run(*args: object) -> Run:
        capsys.readouterr()
        exit_code = main([str(arg) for arg in args])
        captured = capsys.readouterr()
        return Run(exit_code, captured.out, captured.err)

    return run


@pytest.fixture
def pfx() -> Runner:
    """Run the installed ``pfx`` console script in a subprocess (``PFX_DEBUG`` unset)."""
    assert PFX.exists(), f"the pfx console script is not installed at {PFX}"

    def run(*args: object, env: dict[str, str] | None = None, input: str | None = None) -> Run:
        """``input``: what stdin holds (a pipe); without it stdin is empty."""
        environment = {k: v for k, v in os.environ.items() if k != "PFX_DEBUG"}
        completed = subprocess.run(
            [str(PFX), *map(str, args)],
            input=input or "",
            capture_output=True,
            text=True,
            env={**environment, **(env or {})},
            timeout=120,
            check=False,
        )
        return Run(completed.returncode, completed.stdout, completed.stderr)

    return run


@dataclass(frozen=True)
class Home:
    """A test's own pfx folders (``$PFX_CONFIG_DIR`` and ``$PFX_CACHE_DIR``)."""

    config: Path
    cache: Path


@pytest.fixture
def pfx_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Home:
    """Configuration and cache folders of this test's own, and none of the user's registry,
    token, offline or debug settings."""
    home = Home(tmp_path / "config", tmp_path / "cache")
    monkeypatch.setenv("PFX_CONFIG_DIR", str(home.config))
    monkeypatch.setenv("PFX_CACHE_DIR", str(home.cache))
    for variable in ("PFX_REGISTRY", "PFX_TOKEN", "PFX_OFFLINE", "PFX_DEBUG"):
        monkeypatch.delenv(variable, raising=False)
    return home


def concept_file(path: Path, key: pf.PrivateKey | None = None, **overrides: Any) -> Path:
    """Write a valid concept file no other test pushes (a seed of its own) to ``path``, signed by
    ``key``; returns ``path``."""
    concept = build_concept(seed=uuid.uuid4().int % 2**32, **overrides)
    pf.save(pf.sign(concept, key) if key else concept, path)
    return path


@dataclass(frozen=True)
class KeyPair:
    """A signing key and its files."""

    key: pf.PrivateKey
    private: Path
    public: Path

    @property
    def key_id(self) -> str:
        """``ed25519:<32 hex>``."""
        return self.key.public_key.key_id


def key_pair(folder: Path) -> KeyPair:
    """A new Ed25519 key saved as ``folder/key`` and ``folder/key.pub``."""
    folder.mkdir(parents=True)
    key = pf.PrivateKey.generate()
    return KeyPair(key, folder / "key", pf.save_private_key(key, folder / "key"))


def cache_files(root: Path) -> list[str]:
    """Every file below the cache folder ``root`` (temporary ones included), relative, sorted."""
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if not path.is_dir())


@pytest.fixture
def signer(tmp_path: Path) -> KeyPair:
    """A signing key in ``tmp_path/signer``."""
    return key_pair(tmp_path / "signer")


def speak_as(monkeypatch: pytest.MonkeyPatch, account: Account | None) -> None:
    """From now on pfx speaks as ``account`` (``$PFX_TOKEN``), or anonymously for None."""
    if account is None:
        monkeypatch.delenv("PFX_TOKEN", raising=False)
    else:
        monkeypatch.setenv("PFX_TOKEN", account.token)


@pytest.fixture
def alice(
    registry_server: RegistryServer, pfx_home: Home, monkeypatch: pytest.MonkeyPatch
) -> Account:
    """A new user with an admin-scope token (every action in their own namespace is allowed);
    pfx speaks to the test registry as alice (``$PFX_REGISTRY``, ``$PFX_TOKEN``)."""
    account = registry_server.create_user("alice", scope="admin")
    monkeypatch.setenv("PFX_REGISTRY", registry_server.url)
    speak_as(monkeypatch, account)
    return account


def push(cli: Runner, file: Path, reference: str, *options: object) -> dict[str, Any]:
    """``pfx push FILE REFERENCE OPTIONS… --json``, which must succeed: its JSON."""
    result = cli("push", file, reference, *options, "--json")
    assert result.exit_code == 0, result.stderr
    return result.json()
