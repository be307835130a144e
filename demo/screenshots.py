"""Screenshots of the web catalog for the docs (docs/screenshots/).

Usage: ``.venv/bin/python demo/screenshots.py OUTDIR``

Starts a registry on embedded defaults (a folder and SQLite, in a temporary folder) on a free
port, publishes three public concepts — signed with a fresh key registered for their namespace,
with Markdown descriptions, labels, two versions and tags, and generated preview images — and
saves PNG screenshots of the home page, a search and a concept page, at desktop (1280 px) and
phone (375 px) widths: ``{home,search,concept}-{desktop,phone}.png``. Needs Debian's
``chromium`` (Playwright drives it; Playwright's own browser download is not used).

tests/registry/test_web_browser.py uses its :class:`Publisher`, :func:`preview_png` and
:func:`launch_chromium`.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
#: Settings of the developer's environment that must not reach the demo registry.
_CLEARED = ("PFX_DATA_DIR", "PFX_DATABASE_URL", "PFX_S3_BUCKET", "PFX_S3_ENDPOINT", "PFX_S3_PREFIX")
#: Screenshot widths, and the height a screenshot is cut at (keeps the files small).
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 375, "height": 800}
MAX_HEIGHT = 1400

# -- a registry --------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def running_registry(folder: Path) -> Iterator[tuple[str, str]]:
    """``pfx-registry serve`` on a free loopback port with its data in ``folder``: yields its URL
    and an administrator token (from ``pfx-registry admin create-token``)."""
    environment = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    environment |= {"PFX_RATE_LIMIT_TOKEN": "0", "PFX_RATE_LIMIT_ADDRESS": "0"}
    data, log = folder / "data", folder / "registry.log"
    registry = str(BIN / "pfx-registry")
    created = subprocess.run(
        [registry, "admin", "create-token", "--data", str(data)],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    admin = created.stdout.split()[-1]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "ab") as output:
        process = subprocess.Popen(
            [registry, "serve", "--port", str(port), "--data", str(data)],
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1.0, trust_env=False).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the registry did not start:\n{log.read_text()}")
            time.sleep(0.1)
        yield url, admin
    finally:
        process.terminate()
        process.wait(timeout=30)


# -- preview images ----------------------------------------------------------------------------

Shape = tuple[str, tuple[float, ...], str]  # kind ("ellipse", "rectangle", "polygon"), xy, fill


def preview_png(background: str, shapes: list[Shape], size: tuple[int, int] = (512, 384)) -> bytes:
    """A PNG of ``shapes`` on ``background`` (coordinates in 0..1 of the width and height),
    drawn at twice the size and reduced, so edges are smooth."""
    scale = 2
    width, height = size[0] * scale, size[1] * scale
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    for kind, xy, fill in shapes:
        points = [value * (width if index % 2 == 0 else height) for index, value in enumerate(xy)]
        if kind == "ellipse":
            draw.ellipse(points, fill=fill)
        elif kind == "rectangle":
            draw.rounded_rectangle(points, radius=12 * scale, fill=fill)
        else:
            draw.polygon(points, fill=fill)
    output = io.BytesIO()
    image.resize(size, Image.Resampling.LANCZOS).save(output, format="PNG", optimize=True)
    return output.getvalue()


def _teddy(background: str, fur: str, turn: float) -> list[Shape]:
    dx = 0.04 * math.sin(turn)
    return [
        ("ellipse", (0.30, 0.50, 0.70, 0.98), fur),  # body
        ("ellipse", (0.30 + dx, 0.12, 0.44 + dx, 0.32), fur),  # ears
        ("ellipse", (0.56 + dx, 0.12, 0.70 + dx, 0.32), fur),
        ("ellipse", (0.34 + dx, 0.16, 0.66 + dx, 0.58), fur),  # head
        ("ellipse", (0.44 + dx, 0.38, 0.56 + dx, 0.52), "#e9cfa6"),  # muzzle
        ("ellipse", (0.42 + dx, 0.28, 0.45 + dx, 0.32), "#1b1f24"),  # eyes
        ("ellipse", (0.55 + dx, 0.28, 0.58 + dx, 0.32), "#1b1f24"),
        ("ellipse", (0.48 + dx, 0.40, 0.52 + dx, 0.44), "#3b2414"),  # nose
        ("rectangle", (0.0, 0.9, 1.0, 1.0), background),  # table edge
    ]


def _teapot(body: str, pattern: str) -> list[Shape]:
    return [
        ("polygon", (0.68, 0.55, 0.86, 0.36, 0.90, 0.38, 0.74, 0.70), body),  # spout
        ("ellipse", (0.14, 0.40, 0.34, 0.72), body),  # handle
        ("ellipse", (0.19, 0.46, 0.30, 0.66), "#f7f3ea"),
        ("ellipse", (0.24, 0.34, 0.76, 0.92), body),  # pot
        ("rectangle", (0.36, 0.28, 0.64, 0.38), body),  # lid
        ("ellipse", (0.46, 0.20, 0.54, 0.30), body),  # knob
        ("ellipse", (0.36, 0.52, 0.50, 0.70), pattern),
        ("ellipse", (0.52, 0.56, 0.64, 0.74), pattern),
    ]


def _watercolour(colours: list[str], offset: float) -> list[Shape]:
    shapes: list[Shape] = []
    for index, colour in enumerate(colours):
        x = 0.1 + 0.22 * index + 0.05 * math.sin(offset + index)
        y = 0.25 + 0.2 * math.cos(offset + 2 * index)
        shapes.append(("ellipse", (x, y, x + 0.34, y + 0.46), colour))
    return shapes


# -- publishing --------------------------------------------------------------------------------


class Publisher:
    """Publishing through the /v1 API with one token (``httpx``; every answer is checked)."""

    def __init__(self, url: str, token: str) -> None:
        self.http = httpx.Client(
            base_url=url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=60.0,
            trust_env=False,
        )

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *_exception: object) -> None:
        self.http.close()

    def call(self, method: str, path: str, expected: tuple[int, ...], **options: Any) -> Any:
        """Send a request; its JSON body (None when it has none). Raises when the status is not
        one of ``expected``."""
        response = self.http.request(method, path, **options)
        if response.status_code not in expected:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
        json_body = response.headers.get("content-type", "").startswith("application/json")
        return response.json() if json_body else None

    def push(self, ref: str, data: bytes, **body: Any) -> str:
        """Upload a concept file and publish it as ``ns/name:version`` with ``body`` (tags,
        private, description, labels); its digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.call("PUT", f"/v1/blobs/{digest}", (200, 201), content=data)
        repository, version = ref.split(":")
        json = {"digest": digest, **body}
        self.call("PUT", f"/v1/concepts/{repository}/versions/{version}", (200, 201), json=json)
        return digest

    def add_preview(self, repository: str, png: bytes) -> None:
        """Add a PNG preview image to ``ns/name``."""
        headers = {"Content-Type": "image/png"}
        self.call(
            "POST", f"/v1/concepts/{repository}/previews", (201,), content=png, headers=headers
        )


def make_concept(seed: int, **metadata: Any) -> Any:
    """A valid SD 1.x concept with random weights and ``metadata`` (create_concept's keywords)."""
    if str(REPO / "tests") not in sys.path:
        sys.path.insert(0, str(REPO / "tests"))
    from concept_factory import build_concept

    return build_concept(seed=seed, **metadata)


def _concepts() -> list[tuple[str, str, str, str, list[str], str, list[bytes]]]:
    """The demo's concepts: repository, title, token, superclass, labels, description, previews."""
    return [
        (
            "atelier/barnaby",
            "Barnaby, a well-loved teddy bear",
            "<barnaby>",
            "teddy",
            ["toy", "teddy", "plush"],
            "Barnaby is a **hand-stitched teddy bear** with one patched ear, trained from 12 "
            "photos on a kitchen table.\n\n"
            "- works best with *a photo of a <barnaby>* and indoor scenes\n"
            "- pairs well with `atelier/willow-teapot`\n\n"
            "Lower `beta` (0.65) for closer likeness; raise it when the prompt is ignored.",
            [
                preview_png("#f3e6cf", _teddy("#c9a27a", "#8a5a34", 0.0)),
                preview_png("#dfeaf5", _teddy("#9ab0c8", "#6f4526", 1.2)),
                preview_png("#e8f1df", _teddy("#a9c08f", "#7d4f2b", 2.4)),
            ],
        ),
        (
            "atelier/willow-teapot",
            "Blue willow teapot",
            "<willow>",
            "teapot",
            ["teapot", "ceramics", "kitchen"],
            "A porcelain teapot with the **blue willow** pattern.\n\n"
            "Trained with masks, so backgrounds stay free: try *a <willow> on a picnic rug*.",
            [
                preview_png("#f7f3ea", _teapot("#2c5aa0", "#cfdcf0")),
                preview_png("#fbeee0", _teapot("#1f4e8c", "#f2d7a8")),
            ],
        ),
        (
            "ada/loose-watercolour",
            "Loose watercolour style",
            "<loose-wc>",
            "painting",
            ["style", "watercolour"],
            "A style concept: soft edges, paper texture, **pigment blooms**.\n\n"
            "Use it after the subject: *a fox in the snow, <loose-wc>*.",
            [
                preview_png("#fbf8f1", _watercolour(["#f2b5a0", "#a7c7e7", "#c3e0b4"], 0.3)),
                preview_png("#f7f7f2", _watercolour(["#f6d186", "#b8a9e3", "#8fd3c8"], 2.0)),
            ],
        ),
    ]


def populate(url: str, admin: str) -> list[str]:
    """Users ``ada`` and organization ``atelier``, a signing key for each namespace, and the
    demo's concepts (two versions each, tagged); the repositories, in the order published."""
    import perfusion_format as pf

    key = pf.PrivateKey.generate()
    with Publisher(url, admin) as root:
        root.call("POST", "/v1/users", (201,), json={"name": "ada"})
        made = root.call(
            "POST", "/v1/tokens", (201,), json={"name": "demo", "user": "ada", "scope": "admin"}
        )
    token = made["token"]
    repositories = []
    with Publisher(url, token) as ada:
        ada.call("POST", "/v1/orgs", (201,), json={"name": "atelier"})
        for ns in ("ada", "atelier"):
            key_body = {"public_key": key.public_key.to_base64(), "name": "studio laptop"}
            ada.call("POST", f"/v1/namespaces/{ns}/keys", (201,), json=key_body)
        for seed, (repository, title, trigger, superclass, labels, text, previews) in enumerate(
            _concepts()
        ):
            for minor, (version, tags) in enumerate((("1.0.0", ["stable"]), ("1.1.0", ["latest"]))):
                concept = make_concept(
                    seed * 10 + minor,
                    name=title,
                    token=trigger,
                    superclass=superclass,
                    author="Ada Lovelace",
                    license="CC-BY-4.0",
                    description=text,
                    created=f"2026-0{minor + 3}-1{seed}T09:30:00Z",
                )
                data = pf.dumps(pf.sign(concept, key))
                body = {"tags": tags, "private": False, "description": text, "labels": labels}
                ada.push(f"{repository}:{version}", data, **body)
            for png in previews:
                ada.add_preview(repository, png)
            for _ in range(3 - seed):  # some downloads, so "most downloaded" has an order
                ada.call("GET", f"/v1/concepts/{repository}/versions/latest/file", (200,))
            repositories.append(repository)
    return repositories


# -- screenshots -------------------------------------------------------------------------------


def save_small_png(data: bytes, path: Path) -> int:
    """Save a screenshot with a 256-colour palette (a fraction of the size, text stays crisp);
    its size in bytes."""
    with Image.open(io.BytesIO(data)) as image:
        reduced = image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
        reduced.save(path, format="PNG", optimize=True)
    return path.stat().st_size


def launch_chromium(playwright: Any) -> Any:
    """Debian's chromium, driven by Playwright (its own browser download is not used)."""
    executable = shutil.which("chromium")
    if executable is None:
        raise RuntimeError("no chromium on PATH: apt-get install -y chromium")
    return playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])


def take_screenshots(url: str, pages: dict[str, str], outdir: Path) -> dict[str, int]:
    """Screenshots of ``pages`` (name → path) at desktop and phone widths into ``outdir``
    (``NAME-desktop.png``, ``NAME-phone.png``); each file's size."""
    from playwright.sync_api import sync_playwright

    sizes = {}
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            for form, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
                context = browser.new_context(viewport=viewport, device_scale_factor=1)
                page = context.new_page()
                for name, path in pages.items():
                    page.goto(url + path, wait_until="load")
                    # card images load lazily: load them all before a full-page screenshot
                    page.evaluate("for (const i of document.images) i.loading = 'eager'")
                    page.wait_for_function("[...document.images].every(i => i.complete)")
                    height = min(page.evaluate("document.documentElement.scrollHeight"), MAX_HEIGHT)
                    clip = {"x": 0, "y": 0, "width": viewport["width"], "height": height}
                    shot = page.screenshot(full_page=True, clip=clip)
                    target = outdir / f"{name}-{form}.png"
                    sizes[target.name] = save_small_png(shot, target)
                context.close()
        finally:
            browser.close()
    return sizes


def main(argv: list[str] | None = None) -> None:
    """Start a registry, publish the demo's concepts, take the screenshots."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path, help="folder for the PNG files")
    arguments = parser.parse_args(argv)
    arguments.outdir.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="pfx-screenshots-") as folder,
        running_registry(Path(folder)) as (url, admin),
    ):
        repositories = populate(url, admin)
        pages = {"home": "/", "search": "/-/search?q=teapot", "concept": f"/{repositories[0]}"}
        sizes = take_screenshots(url, pages, arguments.outdir)
    for name, size in sorted(sizes.items()):
        print(f"{arguments.outdir / name}  {size / 1000:.1f} KB")


if __name__ == "__main__":
    main()
