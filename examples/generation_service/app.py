"""A small image generation service: one diffusers pipeline kept loaded, the concepts each
request names pulled (verified) through pfx and applied for that request only.

Run it with uvicorn (README.md in this folder says how, and what is safe to share)::

    PFX_SERVICE_MODEL=./sd15 uvicorn --app-dir examples/generation_service --factory app:create_app

A request's path through the service:

1. the JSON body is validated (:class:`GenerateRequest`, then this service's limits);
2. each concept reference is pulled with :func:`pfx.pull` — resolved by the registry, checked
   against its digest and the local trust policy, kept in the local cache — and parsed with
   :func:`perfusion_format.load`; none of this touches the pipeline, so requests do it in parallel;
3. under the pipeline's lock: ``perfusion_runtime.apply``, the denoising loop, and always
   ``handle.remove()`` — the pipeline is left exactly as it was, whatever happened;
4. the image is sent back as PNG bytes.

Every failure a caller can cause is answered with ``{"error": {"code": ..., "message": ...}}``
and a 4xx status; the codes are those of the libraries (:data:`ERROR_STATUS` lists the ones
that are not 422).
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

import perfusion_format as pf
import perfusion_runtime as pr
import pfx
from pfx.cache import Cache
from pfx.trust import TrustPolicy

__all__ = ["ERROR_STATUS", "GenerateRequest", "ServiceError", "Settings", "create_app"]

#: HTTP status per error code, for the codes that are not 422 (a concept or a gate that cannot
#: be used: FAMILY_MISMATCH, BASE_MISMATCH, DUPLICATE_TOKEN, INVALID_GATE, a bad file's code …).
#: A registry's own refusal keeps its 404; its other refusals are the service's upstream's (502).
ERROR_STATUS: dict[str, int] = {
    "BAD_REQUEST": 400,  # the body is not JSON, or not a valid request, or over a limit
    "REFERENCE_INVALID": 400,  # a concept reference is malformed
    "UNTRUSTED": 403,  # the trust policy refuses the concept's signatures
    "NOT_SIGNED": 403,
    "SIGNATURE_INVALID": 403,
    "NOT_CACHED": 404,  # offline (PFX_OFFLINE=1) and not in the cache
    "REGISTRY_UNREACHABLE": 502,
    "REGISTRY_PROTOCOL": 502,
    "DIGEST_MISMATCH": 502,  # the registry sent other bytes than those asked for
}


class ServiceError(Exception):
    """A request this service refuses itself: an error ``code``, a one-line ``message`` and the
    HTTP ``status``."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status = code, message, status


@dataclass(frozen=True)
class Settings:
    """What the service is configured with.

    ``registry``, ``token``, ``cache_dir`` and ``config_dir`` (where the trust policy is) left
    None are found as the ``pfx`` command finds them: ``PFX_REGISTRY``, ``PFX_TOKEN``,
    ``PFX_CACHE_DIR``, ``PFX_CONFIG_DIR``, then the config file, then the defaults.
    """

    model: Path | None = None
    """A local diffusers pipeline folder (``PFX_SERVICE_MODEL``), unless a pipeline is given."""
    device: str = "auto"
    """``auto`` (CUDA in fp16 when available, else the CPU in fp32), ``cpu``, ``cuda:1`` …"""
    registry: str | None = None
    token: str | None = None
    cache_dir: Path | None = None
    config_dir: Path | None = None
    allow_unsigned: bool = False
    """Accept unsigned concepts and those signed by keys the trust policy does not trust."""
    max_steps: int = 50
    max_concepts: int = 4
    max_side: int = 1024

    @classmethod
    def from_environment(cls) -> Settings:
        """Settings from ``PFX_SERVICE_MODEL``, ``PFX_SERVICE_DEVICE``,
        ``PFX_SERVICE_ALLOW_UNSIGNED`` (1/true/yes) and ``PFX_SERVICE_MAX_STEPS``,
        ``…_MAX_CONCEPTS``, ``…_MAX_SIDE``; the rest is pfx's own configuration."""
        env = os.environ.get
        model = env("PFX_SERVICE_MODEL")
        return cls(
            model=Path(model) if model else None,
            device=env("PFX_SERVICE_DEVICE", "auto"),
            allow_unsigned=env("PFX_SERVICE_ALLOW_UNSIGNED", "").lower() in ("1", "true", "yes"),
            max_steps=int(env("PFX_SERVICE_MAX_STEPS", cls.max_steps)),
            max_concepts=int(env("PFX_SERVICE_MAX_CONCEPTS", cls.max_concepts)),
            max_side=int(env("PFX_SERVICE_MAX_SIDE", cls.max_side)),
        )


class GenerateRequest(BaseModel):
    """The body of ``POST /generate``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompt: str = Field(min_length=1, max_length=2000, description="With the trigger tokens.")
    concepts: list[str] = Field(
        default_factory=list,
        description="References: NS/NAME[:TAG], NS/NAME@sha256:<hex> or oci://HOST/REPO:TAG.",
    )
    negative_prompt: str | None = Field(default=None, max_length=2000)
    seed: int = Field(default=0, ge=0, lt=2**63)
    steps: int = Field(default=30, ge=1)
    guidance: float = Field(default=7.5, ge=0.0, le=50.0)
    beta: float | None = Field(default=None, description="Gate threshold β for every concept.")
    tau: float | None = Field(default=None, description="Gate temperature τ for every concept.")
    width: int | None = Field(default=None, ge=8, multiple_of=8)
    height: int | None = Field(default=None, ge=8, multiple_of=8)


def _check_limits(request: GenerateRequest, settings: Settings) -> None:
    """BAD_REQUEST when ``request`` asks for more than this service allows."""
    if request.steps > settings.max_steps:
        raise ServiceError("BAD_REQUEST", f"steps: at most {settings.max_steps}")
    if len(request.concepts) > settings.max_concepts:
        raise ServiceError("BAD_REQUEST", f"concepts: at most {settings.max_concepts}")
    for side in ("width", "height"):
        if (getattr(request, side) or 0) > settings.max_side:
            raise ServiceError("BAD_REQUEST", f"{side}: at most {settings.max_side}")


def load_pipeline(model: Path, device: str = "auto") -> Any:
    """The diffusers pipeline saved in ``model``, from local files only (nothing downloaded)."""
    from diffusers import DiffusionPipeline

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    half = {"torch_dtype": torch.float16} if device.startswith("cuda") else {}
    pipe = DiffusionPipeline.from_pretrained(model, local_files_only=True, **half)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _status_of(error: pf.PerfusionError) -> int:
    """The HTTP status for a library error: a registry's 404 stays 404, its other refusals
    are 502 (the service's upstream failed, not the caller); else :data:`ERROR_STATUS` or 422."""
    if isinstance(error, pfx.RegistryError):
        return 404 if error.status == 404 else 502
    return ERROR_STATUS.get(str(error.code), 422)


def create_app(pipe: Any | None = None, settings: Settings | None = None) -> FastAPI:
    """The service around ``pipe`` (default: ``settings.model``, loaded once, here).

    ``settings`` default to :meth:`Settings.from_environment`; ``uvicorn --factory
    app:create_app`` calls this with no arguments.
    """
    settings = settings or Settings.from_environment()
    if pipe is None:
        if settings.model is None:
            raise SystemExit("set PFX_SERVICE_MODEL to a local diffusers pipeline folder")
        pipe = load_pipeline(settings.model, settings.device)
    client = pfx.Client(settings.registry, settings.token)  # httpx inside: safe across threads
    cache = Cache(settings.cache_dir)

    def pull(reference: str) -> pf.Concept:
        """The concept ``reference`` names, verified by pfx against its digest and the trust
        policy (re-read at every pull, so a revoked key takes effect at once)."""
        options: dict[str, Any] = {"cache": cache, "trust": TrustPolicy.load(settings.config_dir)}
        if not reference.startswith("oci://"):
            options["client"] = client  # an OCI reference names its own registry
        return pf.load(pfx.pull(reference, allow_unsigned=settings.allow_unsigned, **options))

    # `pr.apply` changes the pipeline (attention processors, tokenizer, text embeddings) and a
    # diffusers pipeline keeps per-call state (its scheduler's timesteps): one generation at a
    # time per pipeline. Pulling and parsing concepts happen outside this lock.
    lock = threading.Lock()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        client.close()  # the registry connections, when the server shuts down

    app = FastAPI(title="pfx generation service", version=pfx.__version__, lifespan=lifespan)

    @app.exception_handler(pf.PerfusionError)
    async def library_error(_request: Request, error: pf.PerfusionError) -> JSONResponse:
        return _error(_status_of(error), str(error.code), error.message)

    @app.exception_handler(ServiceError)
    async def service_error(_request: Request, error: ServiceError) -> JSONResponse:
        return _error(error.status, error.code, error.message)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        return _error(400, "BAD_REQUEST", f"{where or 'body'}: {first.get('msg', 'invalid')}")

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, error: HTTPException) -> JSONResponse:
        return _error(error.status_code, HTTPStatus(error.status_code).name, str(error.detail))

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, _exception: Exception) -> JSONResponse:
        # a bug, or the device out of memory: the traceback goes to the server's log only
        return _error(500, "INTERNAL_ERROR", "the service failed; its log says why")

    @app.get("/healthz")
    def health() -> dict[str, Any]:
        """The service is up: its pipeline's class and whether a generation is running."""
        return {"status": "ok", "pipeline": type(pipe).__name__, "generating": lock.locked()}

    @app.post(
        "/generate",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}, "description": "The image (PNG)."}},
    )
    def generate(request: GenerateRequest) -> Response:
        """One image for ``request``, its concepts applied for this request only."""
        _check_limits(request, settings)
        concepts = [pull(reference) for reference in request.concepts]
        options: dict[str, Any] = {}
        if request.width:
            options["width"] = request.width
        if request.height:
            options["height"] = request.height
        with lock:
            handle = (
                pr.apply(pipe, concepts, beta=request.beta, tau=request.tau) if concepts else None
            )
            try:
                image = pipe(
                    request.prompt,
                    negative_prompt=request.negative_prompt,
                    num_inference_steps=request.steps,
                    guidance_scale=request.guidance,
                    generator=torch.Generator(device="cpu").manual_seed(request.seed),
                    **options,
                ).images[0]
            finally:
                if handle is not None:
                    handle.remove()
        encoded = io.BytesIO()
        image.save(encoded, format="PNG")
        return Response(encoded.getvalue(), media_type="image/png")

    return app
