"""What the benchmarks share: where they ran, markdown tables, subprocesses on free loopback
ports, and a concept file to serve.

Light on purpose (numpy and perfusion_format only): ``bench.format`` and ``bench.client`` import
it without torch, and ``bench.client`` times the start-up of other processes.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import httpx
import numpy as np

import perfusion_format as pf

__all__ = [
    "REPO",
    "Processes",
    "command",
    "concept_bytes",
    "cpu_model",
    "fmt",
    "free_port",
    "load_average",
    "machine_line",
    "markdown_table",
    "package_version",
    "percentile",
    "print_section",
    "print_table",
    "progress",
]

#: The repository's root folder.
REPO = Path(__file__).resolve().parents[1]


# -- the machine -----------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what :func:`platform.processor` says, else
    ``?``."""
    with contextlib.suppress(OSError, StopIteration):
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
        return next(x.split(":", 1)[1].strip() for x in lines if x.startswith("model name"))
    return platform.processor() or "?"


def machine_line(fields: Mapping[str, object]) -> str:
    """``key value · key value …``: the line under a benchmark's command that says where the
    numbers were taken."""
    return " · ".join(f"{key} {value}" for key, value in fields.items())


def package_version(name: str) -> str:
    """An installed distribution's version, or ``—``."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "—"


def load_average() -> str:
    """The 1, 5 and 15-minute load averages (other work on the machine skews every number)."""
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def command() -> str:
    """The command line this run was started with (``python -m bench.NAME …``)."""
    executable = sys.executable
    with contextlib.suppress(ValueError):
        relative = os.path.relpath(executable)
        if not relative.startswith(".."):
            executable = relative
    module = sys.modules["__main__"].__spec__
    program = ["-m", module.name] if module is not None else [sys.argv[0]]
    return shlex.join([executable, *program, *sys.argv[1:]])


def progress(message: str) -> None:
    """Say what is happening (stderr, so stdout holds only the tables)."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# -- tables ----------------------------------------------------------------------------------


def _cell(value: object) -> str:
    """A cell: integers with thousands separators, everything else as ``str`` gives it."""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def markdown_table(
    headers: Sequence[str], rows: Iterable[Sequence[object]], left: int | None = None
) -> str:
    """A markdown table: the first ``left`` columns left-aligned and the others right-aligned
    (None: every column left-aligned)."""
    left = len(headers) if left is None else left
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * left + "--:|" * (len(headers) - left),
    ]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def print_section(title: str, body: str) -> None:
    """Print ``body`` under a ``###`` heading (stdout, flushed)."""
    print(f"\n### {title}\n\n{body}", flush=True)


def print_table(
    title: str,
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    left: int | None = None,
) -> None:
    """Print a :func:`markdown_table` under a ``###`` heading."""
    print_section(title, markdown_table(headers, rows, left))


def fmt(value: float | None, digits: int = 1) -> str:
    """A number for a table cell; ``—`` for none."""
    if value is None or math.isnan(value):
        return "—"
    return f"{value:,.{digits}f}"


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


# -- servers ---------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Processes:
    """Subprocesses with their output in log files; all stopped by :meth:`stop_all`."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self._running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, argv: Sequence[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in its own session (Ctrl-C reaches only the bench, which stops it)."""
        with open(self.logs / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                list(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self._running.append((name, process))
        return process

    def log(self, name: str, lines: int = 20) -> str:
        """The last lines a process wrote."""
        path = self.logs / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_http(
        self, name: str, process: subprocess.Popen[bytes], url: str, timeout: float = 60
    ) -> None:
        """Wait until ``url`` answers (any status); RuntimeError if the process dies first."""
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited ({process.returncode}):\n{self.log(name)}")
            try:
                httpx.get(url, timeout=2, trust_env=False)
                return
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{name} did not answer on {url}:\n{self.log(name)}"
                    ) from None
                time.sleep(0.1)

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        """Terminate one process (kill after 10 s)."""
        self._running = [(n, p) for n, p in self._running if p is not process]
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def stop_all(self) -> None:
        """Terminate every process still running, newest first."""
        for _, process in reversed(list(self._running)):
            self.stop(process)


# -- a concept to serve ----------------------------------------------------------------------


def concept_bytes(
    seed: int, dtype: pf.DType = "F32", name: str = "Teddy", family: str = "sd-1"
) -> bytes:
    """A valid unsigned concept file (as tests/concept_factory.py's build_concept makes them)."""
    spec = pf.get_family(family)
    assert spec.text_dim is not None
    rng = np.random.default_rng(seed)
    target = rng.standard_normal(spec.text_dim)
    concept = pf.create_concept(
        name=name,
        token="<teddy>",
        superclass="teddy",
        family=family,
        base_fingerprint="sha256:" + "0" * 64,
        embeddings={encoder: rng.standard_normal((1, w)) for encoder, w in spec.text_encoders},
        target_input=target,
        gate_direction=target * 0.5,
        superclass_input=rng.standard_normal(spec.text_dim),
        value_targets={path: rng.standard_normal(w) for path, w in spec.layers or ()},
        dtype=dtype,
        created="2026-11-25T12:00:00Z",
        description="A worn brown teddy bear with a red bow.",
    )
    return pf.dumps(concept)
