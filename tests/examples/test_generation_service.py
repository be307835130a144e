"""examples/generation_service: the FastAPI service that keeps one pipeline loaded and applies
the concepts each request names, pulled and verified through pfx from a real registry.

The service runs in this process (FastAPI's TestClient) around a tiny sd-1-shaped pipeline; the
concepts are pushed, signed by a key the service's trust policy trusts, to the session's registry
server (folder+SQLite: the service does not care where the registry keeps its bytes). Its images
are compared with what ``perfusion_runtime.apply`` and the same pipeline make directly. Every
generation is 2 steps at 32×32.
"""

from __future__ import annotations

import importlib.util
import io
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from concept_factory import REPO
from fastapi.testclient import TestClient
from perfusion_checks import trained_like_concept
from PIL import Image
from registry_server import RegistryServer, unique_name
from tiny_pipelines import build_pipeline, save_pipeline

import perfusion_format as pf
import perfusion_runtime as pr
import pfx
from pfx.trust import TrustPolicy

pytestmark = [
    pytest.mark.parametrize("registry_server", ["folder+sqlite"], indirect=True),
    pytest.mark.usefixtures("one_torch_thread"),
]

APP = REPO / "examples" / "generation_service" / "app.py"
STEPS = 2
MAX_STEPS = 4


def _load_service() -> ModuleType:
    """examples/generation_service/app.py as the module ``generation_service_app``."""
    name = "generation_service_app"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, APP)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up by name
        spec.loader.exec_module(module)
    return sys.modules[name]


service = _load_service()


@dataclass(frozen=True)
class World:
    """The pipeline, the service around it, and the references of the concepts pushed for it."""

    pipe: Any
    http: TestClient
    concepts: dict[str, pf.Concept]  # by reference
    refs: dict[str, str]  # teddy, teapot (by digest), foreign, unsigned, missing
    settings: Any
    folder: Path


@pytest.fixture(scope="module")
def world(
    registry_server: RegistryServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    """Concepts made for a tiny sd-1 pipeline (and one for other weights), pushed as a new user,
    all but ``unsigned`` signed by a key the service's trust policy trusts for that user's
    namespace; the service around the pipeline, with a cache and configuration of its own."""
    folder = tmp_path_factory.mktemp("generation-service")
    config, cache = folder / "config", folder / "cache"
    with pytest.MonkeyPatch.context() as environment:
        # pfx finds nothing of the developer's: its config (default key) and cache are ours
        environment.setenv("PFX_CONFIG_DIR", str(config))
        environment.setenv("PFX_CACHE_DIR", str(cache))
        for variable in ("PFX_REGISTRY", "PFX_TOKEN", "PFX_OFFLINE"):
            environment.delenv(variable, raising=False)

        pipe = build_pipeline("sd-1")
        other_base = build_pipeline("sd-1", seed=7)
        made = {
            "teddy": trained_like_concept(pipe, "<teddy>", "teddy", seed=1),
            "teapot": trained_like_concept(pipe, "<teapot>", "teapot", seed=2),
            "foreign": trained_like_concept(other_base, "<dog>", "dog", seed=3),
            "unsigned": trained_like_concept(pipe, "<cat>", "cat", seed=4),
        }
        key = folder / "signer" / "key"
        key.parent.mkdir()
        public = pf.save_private_key(pf.PrivateKey.generate(), key)
        account = registry_server.create_user("service")
        refs: dict[str, str] = {}
        concepts: dict[str, pf.Concept] = {}
        with registry_server.client(account.token) as client:
            for name, concept in made.items():
                file = folder / f"{name}.perfusion.safetensors"
                pf.save(concept, file)
                signer = None if name == "unsigned" else key
                pushed = pfx.push(
                    file, f"{account.name}/{name}:1.0", client=client, sign_with=signer
                )
                by_digest = name == "teapot"
                refs[name] = (
                    f"{account.name}/{name}@{pushed.digest}" if by_digest else pushed.reference
                )
                concepts[refs[name]] = concept
        refs["missing"] = f"{account.name}/{unique_name('nobody')}:1.0"
        trust = TrustPolicy(config)
        trust.add(f"{account.name}/*", public)
        trust.save()

        settings = service.Settings(
            registry=registry_server.url,
            token=account.token,
            cache_dir=cache,
            config_dir=config,
            max_steps=MAX_STEPS,
        )
        yield World(
            pipe, TestClient(service.create_app(pipe, settings)), concepts, refs, settings, folder
        )


def body(prompt: str, concepts: Sequence[str] = (), seed: int = 0, **extra: Any) -> dict[str, Any]:
    """A request body at the tests' speed (2 steps); ``{name}`` in a concept is a reference of
    the world's, filled in by the test."""
    return {"prompt": prompt, "concepts": list(concepts), "seed": seed, "steps": STEPS, **extra}


def decode(response: Any) -> np.ndarray:
    """The PNG of a successful response, as RGB pixels."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(response.content)) as image:
        assert (image.format, image.size) == ("PNG", (32, 32))
        return np.asarray(image.convert("RGB"))


def direct(pipe: Any, prompt: str, concepts: list[pf.Concept], seed: int = 0) -> np.ndarray:
    """What ``pr.apply`` and the pipeline make without the service (the service's settings)."""
    handle = pr.apply(pipe, concepts) if concepts else None
    try:
        image = pipe(
            prompt,
            num_inference_steps=STEPS,
            guidance_scale=7.5,
            generator=torch.Generator(device="cpu").manual_seed(seed),
        ).images[0]
    finally:
        if handle is not None:
            handle.remove()
    return np.asarray(image.convert("RGB"))


def assert_same_image(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to one step of 8-bit rounding (a float32 kernel may round the other way)."""
    assert actual.shape == expected.shape
    assert np.abs(actual.astype(int) - expected.astype(int)).max() <= 1


def snapshot(pipe: Any) -> dict[str, Any]:
    """Identities of what ``pr.apply`` replaces: processors, tokenizer, input embeddings."""
    embeddings = pipe.text_encoder.get_input_embeddings()
    return {
        "processors": {name: id(p) for name, p in pipe.unet.attn_processors.items()},
        "tokenizer": (id(pipe.tokenizer), len(pipe.tokenizer)),
        "embeddings": (id(embeddings), tuple(embeddings.weight.shape)),
    }


# -- images ----------------------------------------------------------------------------------


def test_one_concept_gives_the_image_apply_gives_and_leaves_the_pipeline_as_it_was(
    world: World,
) -> None:
    teddy = world.refs["teddy"]
    prompt = "a photo of a <teddy>"
    before = snapshot(world.pipe)
    plain = direct(world.pipe, prompt, [])

    served = decode(world.http.post("/generate", json=body(prompt, [teddy], seed=3)))

    assert_same_image(served, direct(world.pipe, prompt, [world.concepts[teddy]], seed=3))
    assert not np.array_equal(served, direct(world.pipe, prompt, [], seed=3))
    assert snapshot(world.pipe) == before
    assert_same_image(decode(world.http.post("/generate", json=body(prompt))), plain)


def test_two_concepts_at_once_one_named_by_digest(world: World) -> None:
    teddy, teapot = world.refs["teddy"], world.refs["teapot"]
    prompt = "a <teddy> sitting in a <teapot>"
    before = snapshot(world.pipe)

    served = decode(world.http.post("/generate", json=body(prompt, [teddy, teapot])))

    both = [world.concepts[teddy], world.concepts[teapot]]
    assert_same_image(served, direct(world.pipe, prompt, both))
    assert not np.array_equal(served, direct(world.pipe, prompt, [world.concepts[teddy]]))
    assert snapshot(world.pipe) == before


def test_concurrent_requests_take_turns_and_each_gets_its_own_concept(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = ["teddy", "teapot"] * 3
    prompts = {name: f"a photo of a <{name}> on a table" for name in names}
    expected = {
        name: direct(world.pipe, prompts[name], [world.concepts[world.refs[name]]])
        for name in set(names)
    }
    before = snapshot(world.pipe)

    inside, most = [0], [0]
    guard = threading.Lock()
    step = world.pipe.scheduler.step

    def counting_step(*args: Any, **kwargs: Any) -> Any:
        """The scheduler's step, counting how many generations are inside it at once."""
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.002)  # widen the window in which an unserialised generation would overlap
        try:
            return step(*args, **kwargs)
        finally:
            with guard:
                inside[0] -= 1

    monkeypatch.setattr(world.pipe.scheduler, "step", counting_step)
    start = threading.Barrier(len(names))

    def request(name: str) -> Any:
        start.wait()
        return world.http.post("/generate", json=body(prompts[name], [world.refs[name]]))

    with ThreadPoolExecutor(len(names)) as pool:
        responses = list(pool.map(request, names))

    for name, response in zip(names, responses, strict=True):
        assert_same_image(decode(response), expected[name])
    assert most[0] == 1
    assert snapshot(world.pipe) == before
    assert world.http.get("/healthz").json()["generating"] is False


# -- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_body", "status", "code"),
    [
        pytest.param(body("a <x>", ["{missing}"]), 404, "NOT_FOUND", id="unknown-concept"),
        pytest.param(body("a <dog>", ["{foreign}"]), 422, "BASE_MISMATCH", id="other-base"),
        pytest.param(body("a <cat>", ["{unsigned}"]), 403, "NOT_SIGNED", id="unsigned"),
        pytest.param(body("a <x>", ["no reference"]), 400, "REFERENCE_INVALID", id="bad-ref"),
        pytest.param(body("a <teddy>", ["{teddy}"], tau=0), 422, "INVALID_GATE", id="gate"),
        pytest.param(body("a <teddy>", ["{teddy}", "{teddy}"]), 422, "DUPLICATE_TOKEN", id="twice"),
        pytest.param(body("a <teddy>", steps=MAX_STEPS + 1), 400, "BAD_REQUEST", id="steps"),
        pytest.param(body("a <teddy>", width=30), 400, "BAD_REQUEST", id="width"),
        pytest.param(body("a <teddy>", colour="red"), 400, "BAD_REQUEST", id="unknown-field"),
        pytest.param({"concepts": []}, 400, "BAD_REQUEST", id="no-prompt"),
        pytest.param(b'{"prompt": "a <teddy>",', 400, "BAD_REQUEST", id="not-json"),
    ],
)
def test_refusals_are_one_json_error_and_leave_the_pipeline_untouched(
    world: World, request_body: dict[str, Any] | bytes, status: int, code: str
) -> None:
    before = snapshot(world.pipe)
    if isinstance(request_body, bytes):
        headers = {"content-type": "application/json"}
        response = world.http.post("/generate", content=request_body, headers=headers)
    else:
        concepts = [ref.format(**world.refs) for ref in request_body["concepts"]]
        response = world.http.post("/generate", json={**request_body, "concepts": concepts})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"] and "\n" not in error["message"]
    assert "Traceback" not in response.text
    assert snapshot(world.pipe) == before


def test_health_and_unknown_routes(world: World) -> None:
    health = world.http.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {
        "status": "ok",
        "pipeline": "StableDiffusionPipeline",
        "generating": False,
    }
    missing = world.http.get("/nowhere")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "NOT_FOUND")


# -- configured from the environment, as uvicorn --factory runs it --------------------------


def test_the_factory_reads_the_model_and_pfx_settings_from_the_environment(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = save_pipeline(world.pipe, world.folder / "model")
    monkeypatch.setenv("PFX_SERVICE_MODEL", str(model))
    monkeypatch.setenv("PFX_SERVICE_DEVICE", "cpu")
    monkeypatch.setenv("PFX_SERVICE_MAX_STEPS", "3")
    monkeypatch.setenv("PFX_REGISTRY", world.settings.registry)
    monkeypatch.setenv("PFX_TOKEN", world.settings.token)
    monkeypatch.setenv("PFX_CONFIG_DIR", str(world.settings.config_dir))
    monkeypatch.setenv("PFX_CACHE_DIR", str(world.folder / "own-cache"))

    http = TestClient(service.create_app())

    teddy = world.refs["teddy"]
    served = decode(http.post("/generate", json=body("a photo of a <teddy>", [teddy], seed=5)))
    assert_same_image(
        served, direct(world.pipe, "a photo of a <teddy>", [world.concepts[teddy]], 5)
    )
    assert any((world.folder / "own-cache").rglob("*")), "pulled into $PFX_CACHE_DIR"
    too_many = http.post("/generate", json=body("a <teddy>", steps=4))
    assert (too_many.status_code, too_many.json()["error"]["code"]) == (400, "BAD_REQUEST")
