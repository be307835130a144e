"""Benchmark the pfx client's start-up and pulls, beside reference commands, in one run.

Prints markdown tables: the wall time of ``pfx pull`` of a cached, pinned concept beside
``python -c "import pfx"`` and ``python -c "import huggingface_hub"`` (client start-up cost), and
of a cold ``pfx pull`` (empty cache: resolve, download, verify digest and signature, store) from a
local registry beside ``curl`` of the same file URL. Every command is a fresh process, run
``--runs`` times with the kinds interleaved so that machine noise hits them alike.

    python -m bench.client [--runs 21]

Needs curl; starts ``pfx-registry serve`` on embedded defaults (folder + SQLite) on a free
loopback port and removes everything it made at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import perfusion_format as pf
from pfx.client import Client

from .common import (
    Processes,
    concept_bytes,
    cpu_model,
    fmt,
    free_port,
    load_average,
    machine_line,
    package_version,
    percentile,
    print_table,
    progress,
)

BIN = Path(sys.executable).parent
PYTHON = sys.executable
PINNED_VS_IMPORT = 1.3
COLD_VS_CURL = 3.0
IMPORT_PFX = 'python -c "import pfx"'
PINNED_PULL = "pfx pull NS/NAME@sha256:… (cached, pinned)"
COLD_PULL = "pfx pull NS/NAME:1.0 (cold: empty cache)"
CURL = "curl the same file URL"


def wall_ms(argv: Sequence[str], env: dict[str, str]) -> float:
    """Run ``argv`` to completion; its wall time in milliseconds (it must succeed)."""
    started = time.perf_counter()
    result = subprocess.run(list(argv), env=env, capture_output=True)
    elapsed = (time.perf_counter() - started) * 1000
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({result.returncode}): {result.stderr.decode()}")
    return elapsed


def main(argv: Sequence[str] | None = None) -> int:
    """Set up a registry with one signed concept, time the commands, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=21, help="runs of each command (default 21)")
    arguments = parser.parse_args(argv)
    curl = shutil.which("curl")
    if curl is None:
        print("bench.client needs curl (apt-get install -y curl)", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="pfx-bench-client-"))
    processes = Processes(root)
    try:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("PFX_") and key != "HF_HUB_OFFLINE"
        }
        env |= {"PFX_RATE_LIMIT_TOKEN": "0", "PFX_RATE_LIMIT_ADDRESS": "0", "NO_COLOR": "1"}
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        data = root / "registry"
        progress("starting pfx-registry serve (folder + SQLite)")
        server = processes.start(
            "registry",
            [str(BIN / "pfx-registry"), "serve", "--port", str(port), "--data", str(data)],
            env,
        )
        processes.wait_http("registry", server, f"{url}/healthz")
        admin = subprocess.run(
            [str(BIN / "pfx-registry"), "admin", "create-token", "--data", str(data)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        key = pf.PrivateKey.generate()
        pf.save_private_key(key, root / "key")  # and its public half, key.pub
        payload = pf.dumps(pf.sign(pf.loads(concept_bytes(1)), key))
        with Client(url, admin) as client:
            digest = client.upload_blob(payload).digest
            client.publish("admin", "teddy", "1.0", digest, private=False)
        config = root / "config"
        client_env = env | {
            "PFX_REGISTRY": url,
            "PFX_CONFIG_DIR": str(config),
            "PFX_CACHE_DIR": str(root / "cache"),
        }
        subprocess.run(
            [str(BIN / "pfx"), "trust", "add", "admin/*", str(root / "key.pub")],
            env=client_env,
            check=True,
            capture_output=True,
        )
        pinned = f"admin/teddy@{digest}"
        wall_ms([str(BIN / "pfx"), "pull", pinned], client_env)  # fills the cache
        commands: dict[str, tuple[list[str], bool]] = {
            "python -c pass (interpreter)": ([PYTHON, "-c", "pass"], False),
            IMPORT_PFX: ([PYTHON, "-c", "import pfx"], False),
            'python -c "import huggingface_hub"': ([PYTHON, "-c", "import huggingface_hub"], False),
            'python -c "import pfx.cli" (the CLI\'s imports)': (
                [PYTHON, "-c", "import pfx.cli"],
                False,
            ),
            'python -c "pfx.pull(NS/NAME@sha256:…)" (cached, pinned)': (
                [PYTHON, "-c", f"import pfx; pfx.pull({pinned!r})"],
                False,
            ),
            PINNED_PULL: (
                [str(BIN / "pfx"), "pull", pinned],
                False,
            ),
            COLD_PULL: (
                [str(BIN / "pfx"), "pull", "admin/teddy:1.0"],
                True,
            ),
            CURL: (
                [curl, "-sf", "-o", os.devnull, f"{url}/v1/concepts/admin/teddy/versions/1.0/file"],
                False,
            ),
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        progress(f"timing {len(commands)} commands × {arguments.runs} runs, interleaved")
        for run in range(arguments.runs):
            for name, (command, cold) in commands.items():
                run_env = client_env
                if cold:
                    run_env = client_env | {"PFX_CACHE_DIR": str(root / f"cold-{run}")}
                times[name].append(wall_ms(command, run_env))
        rows = [
            (
                name,
                fmt(statistics.median(values)),
                fmt(percentile(values, 0.1)),
                fmt(percentile(values, 0.9)),
            )
            for name, values in times.items()
        ]
        machine = {
            "machine": f"{cpu_model()}, {os.cpu_count()} CPUs",
            "python": platform.python_version(),
            "httpx": package_version("httpx"),
            "huggingface_hub": package_version("huggingface_hub"),
            "load average": load_average(),
        }
        print("\n" + machine_line(machine))
        print_table(
            f"Wall time per command, fresh process each run ({arguments.runs} runs, ms)",
            ("command", "median", "p10", "p90"),
            rows,
        )
        median = {name: statistics.median(values) for name, values in times.items()}
        targets = [
            (
                "cached pinned pull / import pfx",
                median[PINNED_PULL] / median[IMPORT_PFX],
                PINNED_VS_IMPORT,
            ),
            ("cold pull / curl", median[COLD_PULL] / median[CURL], COLD_VS_CURL),
        ]
        print_table(
            "The issue's targets (ratios of medians)",
            ("ratio", "measured", "goal", ""),
            [
                (what, f"{ratio:.2f}×", f"≤ {goal}×", "met" if ratio <= goal else "MISSED")
                for what, ratio, goal in targets
            ],
        )
    finally:
        processes.stop_all()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
