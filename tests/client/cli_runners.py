"""Running ``pfx`` in tests: in this process through ``pfx.cli.main`` (fixture ``cli``), or as
the installed console script in a subprocess (fixture ``pfx``), so exit codes and the absence of
tracebacks are exactly what a user sees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

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

    def run(*args: object, env: dict[str, str] | None = None) -> Run:
        environment = {k: v for k, v in os.environ.items() if k != "PFX_DEBUG"}
        completed = subprocess.run(
            [str(PFX), *map(str, args)],
            capture_output=True,
            text=True,
            env={**environment, **(env or {})},
            timeout=120,
            check=False,
        )
        return Run(completed.returncode, completed.stdout, completed.stderr)

    return run
