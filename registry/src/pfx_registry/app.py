"""The registry's FastAPI application factory.

Errors follow one shape everywhere: ``{"error": {"code": ..., "message": ...}}`` with the right
HTTP status. Concept files refused by perfusion_format keep the format's code (422); a backend that
is down is 503 UNAVAILABLE; nothing a client sends produces a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import compile_path

import perfusion_format as pf

from . import distribution, web
from .api import ROUTERS
from .api.openapi import install_openapi
from .api.operations import Readiness
from .distribution import is_distribution_path, oci_error_response
from .errors import ApiError, BackendUnavailable, Code
from .migrate import upgrade
from .observability import Metrics, RateLimit, RequestAccounting
from .settings import Settings
from .state import Registry, open_registry
from .web import error_page, is_page_path

__all__ = ["create_app", "error_response"]

logger = logging.getLogger("pfx_registry")

_STATUS_CODES = {
    400: Code.BAD_REQUEST,
    401: Code.UNAUTHORIZED,
    403: Code.FORBIDDEN,
    404: Code.NOT_FOUND,
    405: Code.METHOD_NOT_ALLOWED,
}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The registry's one error shape. The message may echo what a client sent: characters that
    UTF-8 cannot carry (lone surrogates) are written as escapes, so every error can be sent."""
    printable = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse(
        {"error": {"code": str(code), "message": printable}}, status_code=status, headers=headers
    )


def _answer(
    request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    """An error as the asker reads it: an HTML page on the web catalog's paths, the JSON error
    shape on the API's."""
    if is_distribution_path(request.url.path):
        return oci_error_response(request, status, code, message, headers)
    if is_page_path(request.url.path):
        printable = message.encode("utf-8", "backslashreplace").decode("utf-8")
        return error_page(request, status, code, printable, headers)
    return error_response(status, code, message, headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def registry_error(request: Request, error: ApiError) -> Response:
        return _answer(request, error.status, error.code, error.message, error.headers)

    @app.exception_handler(pf.FormatError)
    async def format_error(request: Request, error: pf.FormatError) -> Response:
        return _answer(request, 422, error.code, error.message)

    @app.exception_handler(BackendUnavailable)
    async def unavailable(request: Request, error: BackendUnavailable) -> Response:
        return _answer(request, 503, Code.UNAVAILABLE, str(error), {"Retry-After": "5"})

    @app.exception_handler(OperationalError)
    async def index_unavailable(request: Request, error: OperationalError) -> Response:
        message = f"the index is unavailable ({type(error.orig).__name__})"
        return _answer(request, 503, Code.UNAVAILABLE, message, {"Retry-After": "5"})

    @app.exception_handler(DataError)
    async def data_refused(request: Request, error: DataError) -> Response:
        # Inputs are checked before SQL; should one still be refused by the database (a value
        # out of its range), it is the client's value, never a server error.
        logger.warning("the index refused a value: %s", type(error.orig).__name__)
        return _answer(request, 400, Code.BAD_REQUEST, "a value is out of range or malformed")

    @app.exception_handler(PoolTimeout)
    async def index_busy(request: Request, _error: PoolTimeout) -> Response:
        message = "the index is busy: no connection became free"
        return _answer(request, 503, Code.UNAVAILABLE, message, {"Retry-After": "5"})

    @app.exception_handler(ClientDisconnect)
    async def disconnected(request: Request, _error: ClientDisconnect) -> Response:
        # the client left, or RequestAccounting already answered 413 and ended the body
        return _answer(request, 400, Code.BAD_REQUEST, "the request body ended early")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> Response:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return _answer(request, 400, Code.BAD_REQUEST, f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        code = _STATUS_CODES.get(error.status_code, Code.BAD_REQUEST)
        headers = dict(error.headers or {})
        if error.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return _answer(request, error.status_code, code, str(error.detail), headers)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route answers at the request's path, from the API's own description
    (Starlette's 405 names only the first route that matched the path); HEAD wherever GET is."""
    methods: set[str] = set()
    if is_distribution_path(request.url.path):  # mounted: its routes' paths are relative
        v2_path = request.url.path.removeprefix(distribution.PREFIX) or "/"
        methods |= web.router_methods(distribution.router, v2_path)
    for router in web.ROUTERS:
        methods |= web.router_methods(router, request.url.path)
    for template, path_item in request.app.openapi()["paths"].items():
        if compile_path(template)[0].match(request.url.path):
            methods.update(method.upper() for method in path_item)
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def create_app(settings: Settings | None = None, *, migrate: bool = True) -> FastAPI:
    """Build the registry for ``settings`` (default: from the environment). With ``migrate``
    the index schema is brought up to date when the app starts."""
    settings = settings or Settings.from_env()
    registry = open_registry(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if migrate:
            upgrade(registry.engine)
        flusher = asyncio.create_task(_flush_downloads_forever(registry))
        try:
            yield
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            _flush_downloads(registry)
            registry.engine.dispose()

    app = FastAPI(title="pfx registry", version="1", lifespan=lifespan)
    app.state.registry = registry
    app.state.metrics = Metrics()
    app.state.readiness = Readiness(registry)
    _install_error_handlers(app)
    app.router.routes.insert(0, distribution.V2Mount())
    for router in (*ROUTERS, *web.ROUTERS):
        app.include_router(router)
    install_openapi(app)
    app.add_middleware(
        RequestAccounting,
        metrics=app.state.metrics,
        token_limit=RateLimit(settings.rate_limit_token, 4 * settings.rate_limit_token),
        address_limit=RateLimit(settings.rate_limit_address, 4 * settings.rate_limit_address),
        body_limit=lambda path: (
            settings.max_concept_bytes
            if path.startswith("/v1/blobs/") or (path.startswith("/v2/") and "/blobs/" in path)
            else settings.max_preview_bytes
            if path.endswith("/previews")
            else settings.max_json_bytes
        ),
    )

    return app


async def _flush_downloads_forever(registry: Registry, every: float = 1.0) -> None:
    """Write the download counts to the index every ``every`` seconds; an index outage only
    delays them (they are kept and written by a later flush)."""
    while True:
        await asyncio.sleep(every)
        await run_in_threadpool(_flush_downloads, registry)


def _flush_downloads(registry: Registry) -> None:
    try:
        registry.downloads.flush(registry.engine)
    except (OperationalError, PoolTimeout) as error:
        logger.warning("download counts not written yet: %s", type(error).__name__)
