"""`make demo`: the whole of pfx in one run, offline, on a fresh clone.

Starts a registry on embedded defaults (a folder and SQLite), builds a tiny SD-shaped pipeline,
creates two concepts, signs them and pushes them to two organizations (one private), searches,
pulls with verification, and generates an image with both concepts — printing each ``pfx``
command and its output. Everything lives in a temporary folder (kept with ``--keep``); the
user's own pfx configuration and cache are not touched.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def step(title: str) -> None:
    """Print a step's heading."""
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def run(*command: str, env: dict[str, str], check: bool = True) -> str:
    """Run a pfx command, echoing it and its output; its stdout."""
    print(f"$ {shlex.join(command)}", flush=True)
    result = subprocess.run(
        [str(BIN / command[0]), *command[1:]], env=env, capture_output=True, text=True
    )
    text = (result.stdout + result.stderr).rstrip()
    if text:
        print(text, flush=True)
    if check and result.returncode != 0:
        raise SystemExit(f"demo failed: {command[0]} exited {result.returncode}")
    return result.stdout.strip()


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def make_concepts(model: Path, folder: Path) -> tuple[Path, Path]:
    """Two concepts for the tiny pipeline (the initialisation the paper trains from)."""
    from diffusers import DiffusionPipeline

    import perfusion_format as pf
    import perfusion_runtime as pr

    pipe = DiffusionPipeline.from_pretrained(model, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    paths = []
    for token, superclass, title in (("<teddy>", "teddy", "Teddy"), ("<pot>", "teapot", "Pot")):
        concept = pr.new_concept(
            pipe, token=token, superclass=superclass, name=title, description=f"demo {title}"
        )
        path = folder / f"{superclass}.perfusion.safetensors"
        pf.save(concept, path)
        paths.append(path)
    return paths[0], paths[1]


def main() -> None:
    """Run the demo."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--serve", action="store_true", help="keep the registry running afterwards (Ctrl-C stops)"
    )
    parser.add_argument("--port", type=int, default=0, help="the registry's port (default: any)")
    arguments = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pfx-demo-"))
    env = {
        **os.environ,
        "PFX_CONFIG_DIR": str(root / "config"),
        "PFX_CACHE_DIR": str(root / "cache"),
        "NO_COLOR": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "DIFFUSERS_VERBOSITY": "error",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    os.environ.update(
        {
            key: env[key]
            for key in (
                "TRANSFORMERS_VERBOSITY",
                "DIFFUSERS_VERBOSITY",
                "HF_HUB_DISABLE_PROGRESS_BARS",
                "HF_HUB_OFFLINE",
            )
        }
    )
    for variable in ("PFX_REGISTRY", "PFX_TOKEN", "PFX_OFFLINE"):
        env.pop(variable, None)
    port = arguments.port or free_port()
    url = f"http://127.0.0.1:{port}"
    server = None
    try:
        step("start a registry on embedded defaults (folder + SQLite)")
        data = root / "registry"
        server = subprocess.Popen(
            [str(BIN / "pfx-registry"), "serve", "--port", str(port), "--data", str(data)],
            env=env,
            # a file, not a pipe: nobody reads the access log while the demo (or --serve) runs
            stdout=(root / "registry.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("demo failed: the registry did not start")
            time.sleep(0.2)
        print(f"registry ready at {url}")
        admin = run("pfx-registry", "admin", "create-token", "--data", str(data), env=env)
        run("pfx", "login", url, "--token", admin, env=env)

        step("create two organizations")
        run("pfx", "org", "create", "acme", env=env)
        run("pfx", "org", "create", "lab", env=env)
        run("pfx", "org", "ls", env=env)

        step("build a tiny SD-shaped pipeline offline and make two concepts")
        sys.path.insert(0, str(REPO / "tests"))
        from tiny_pipelines import build_pipeline, save_pipeline

        model = save_pipeline(build_pipeline("sd-1"), root / "model")
        teddy, teapot = make_concepts(model, root)
        run("pfx", "inspect", str(teddy), env=env)

        step("sign: a key, registered for both organizations, required by acme")
        key = root / "keys" / "demo"
        run("pfx", "keygen", "-o", str(key), env=env)
        for org in ("acme", "lab"):
            run("pfx", "key", "add", org, f"{key}.pub", "--name", "demo", env=env)
        run("pfx", "policy", "acme", "--require-signatures", env=env)

        step("push: acme/teddy public, lab/pot private")
        run("pfx", "push", str(teddy), "acme/teddy:1.0", "--public", "--sign", str(key),
            "--label", "toy", env=env)  # fmt: skip
        run("pfx", "push", str(teapot), "lab/pot:1.0", "--private", "--sign", str(key), env=env)

        step("search (logged in, then anonymously: the private concept is not found)")
        run("pfx", "search", env=env)
        anonymous = {**env, "PFX_CONFIG_DIR": str(root / "nobody")}
        run("pfx", "search", "--registry", url, env=anonymous)

        step("pull with verification: trust the key, then pull both")
        run("pfx", "trust", "add", "acme/*", f"{key}.pub", env=env)
        run("pfx", "trust", "add", "lab/*", f"{key}.pub", env=env)
        run("pfx", "pull", "acme/teddy:1.0", env=env)
        run("pfx", "pull", "lab/pot", env=env)
        run("pfx", "cache", "ls", env=env)

        step("generate an image with both concepts")
        image = root / "demo.png"
        run("pfx", "generate", "--model", str(model), "-c", "acme/teddy:1.0", "-c", "lab/pot",
            "--prompt", "a photo of a <teddy> next to a <pot>", "--steps", "4",
            "--seed", "1", "-o", str(image), env=env)  # fmt: skip

        step("show it in the web catalog: the image becomes acme/teddy's preview")
        run("pfx", "push", str(teddy), "acme/teddy:1.0", "--sign", str(key),
            "--preview", str(image), env=env)  # fmt: skip
        print(f"the catalog: {url}/ · the concept's page: {url}/acme/teddy")
        print(f"\ndemo complete; the image is {image}" if arguments.keep else "\ndemo complete")
        if arguments.serve:
            print(f"serving the catalog at {url}/ until Ctrl-C (sign in with {admin})", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                server.wait()
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        if not arguments.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
