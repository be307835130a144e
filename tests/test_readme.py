"""The READMEs' commands and code, run as a newcomer would run them.

README.md's five-minute tour is every ```console block preceded by ``<!-- readme-test: tour -->``:
its ``$`` lines run in order, in one bash with ``set -e``, in a fresh folder that holds what the
tour assumes — ``.venv`` (a link to this one), ``./sd15`` (a tiny SD-shaped pipeline, built
offline) and ``photos/teddy/`` — against a real ``pfx-registry serve --data data`` started there
on a free port (the tour's ``127.0.0.1:8700`` is replaced by that port). Only two things change
for speed: ``pfx train`` gets ``--steps 2 --batch 1 --accumulate 1`` and a three-line caption file
appended. Then every ```python block of README.md and of the four package READMEs runs, each in a
fresh interpreter namespace, in the same folder (so the tour's registry, keys and concept are at
hand). A block preceded by ``<!-- readme-test: skip -->`` is not run. A renamed command, flag or
function makes this test fail.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from concept_factory import REPO
from registry_server import free_port, stop_process, wait_until_ready

pytestmark = pytest.mark.skipif(
    os.environ.get("PFX_TEST_DEVICE", "cpu") != "cpu", reason="the tour runs on the CPU"
)

BIN = Path(sys.executable).parent
READMES = [
    REPO / "README.md",
    REPO / "perfusion_format" / "README.md",
    REPO / "runtime" / "README.md",
    REPO / "registry" / "README.md",
    REPO / "client" / "README.md",
]
BLOCK = re.compile(r"(?:<!-- readme-test: (\w+) -->\s*\n)?```(\w+)\n(.*?)```", re.S)
#: Appended to the tour's commands that start with these words (only to make them fast).
FASTER = {"pfx train": " --steps 2 --batch 1 --accumulate 1 --captions captions.txt"}


def blocks(path: Path, language: str) -> list[tuple[str | None, str]]:
    """The (marker, code) of every fenced block of ``language`` in ``path``."""
    return [
        (marker, code) for marker, lang, code in BLOCK.findall(path.read_text()) if lang == language
    ]


def tour_commands(readme: Path) -> list[str]:
    """The ``$`` commands of the tour blocks, continuation lines joined."""
    commands: list[str] = []
    for marker, code in blocks(readme, "console"):
        if marker != "tour":
            continue
        pending = ""
        for line in code.splitlines():
            if pending:
                pending += " " + line.strip()
            elif line.startswith("$ "):
                pending = line[2:]
            else:
                continue  # output shown in the README
            if pending.endswith("\\"):
                pending = pending[:-1].rstrip()
                continue
            commands.append(pending)
            pending = ""
    return commands


def test_the_readme_has_a_tour_and_python_blocks() -> None:
    commands = tour_commands(REPO / "README.md")
    words = " ".join(commands)
    for step in ("pfx train", "pfx sign", "pfx push", "pfx search", "pfx pull", "pfx generate"):
        assert step in words, f"the tour lost its {step!r} step"
    for readme in READMES:
        assert blocks(readme, "python"), f"{readme} has no python example"


def _prepare(folder: Path) -> None:
    """What the tour assumes: .venv, ./sd15, photos/teddy/, and captions for a fast covariance."""
    from tiny_pipelines import build_pipeline, save_pipeline
    from training_images import draw_images

    (folder / ".venv").symlink_to(BIN.parent)
    save_pipeline(build_pipeline("sd-1"), folder / "sd15")
    draw_images(folder / "photos" / "teddy", count=2)
    (folder / "captions.txt").write_text(
        "a photo of a teddy\na teddy on a table\na red teapot on a table\n"
    )


def _environment(folder: Path) -> dict[str, str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PFX_") or key == "PFX_TEST_DATABASE_URL"
    }
    return environment | {
        "PFX_CONFIG_DIR": str(folder / "config"),
        "PFX_CACHE_DIR": str(folder / "cache"),
        "PFX_RATE_LIMIT_TOKEN": "0",
        "PFX_RATE_LIMIT_ADDRESS": "0",
        "HF_HUB_OFFLINE": "1",
        "NO_COLOR": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "OMP_NUM_THREADS": "1",
    }


def _tour_script(port: int) -> str:
    lines = ["set -euo pipefail"]
    for command in tour_commands(REPO / "README.md"):
        command = command.replace("127.0.0.1:8700", f"127.0.0.1:{port}")
        for prefix, extra in FASTER.items():
            if command.startswith(prefix):
                command = re.sub(r"(\s+#.*)?$", extra, command, count=1)
        lines.append(f"echo '>>> '{_quote(command)}")
        lines.append(command)
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _python_runner(sources: list[tuple[str, str]]) -> str:
    """A script that runs each (name, code) in a fresh namespace and names the one that fails."""
    return textwrap.dedent(
        f"""
        import sys, traceback
        for name, code in {sources!r}:
            print(">>>", name, flush=True)
            try:
                exec(compile(code, name, "exec"), {{"__name__": "__readme__"}})
            except BaseException:
                traceback.print_exc()
                sys.exit(f"{{name}} failed")
        """
    )


def test_the_readme_tour_and_every_python_block_run(tmp_path: Path) -> None:
    _prepare(tmp_path)
    environment = _environment(tmp_path)
    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "pfx-registry"), "serve", "--data", "data", "--port", str(port)],
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "registry.log", "wb"),  # noqa: SIM115 (closed with the process)
    )
    try:
        wait_until_ready(server, f"http://127.0.0.1:{port}", tmp_path / "registry.log")
        tour = subprocess.run(
            ["bash", "-c", _tour_script(port)],
            cwd=tmp_path,
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert tour.returncode == 0, f"the tour failed:\n{tour.stdout}\n{tour.stderr}"
        assert (tmp_path / "teddy.png").stat().st_size > 0
        assert (tmp_path / "teddy.pulled.safetensors").exists()

        sources = [
            (f"{readme.relative_to(REPO)} python block {index}", code)
            for readme in READMES
            for index, (marker, code) in enumerate(blocks(readme, "python"), 1)
            if marker != "skip"
        ]
        python = subprocess.run(
            [sys.executable, "-c", _python_runner(sources)],
            cwd=tmp_path,
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert python.returncode == 0, f"{python.stdout}\n{python.stderr}"
        assert python.stdout.count(">>>") == len(sources)
    finally:
        stop_process(server)
