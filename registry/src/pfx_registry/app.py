"""The registry's FastAPI application factory.

Errors follow one shape everywhere: ``{"error": {"code": ..., "message": ...}}`` with the right
HTTP status; the codes of concept-file problems are those of spec/concept-format.md.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

import perfusion_format as pf


def error_response(status: int, code: str, message: str) -> JSONResponse:
    """The registry's one error shape."""
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


async def _read_limited(request: Request, limit: int) -> bytes | None:
    """The request body, or None as soon as it grows past ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def describe(concept: pf.Concept, data: bytes) -> dict[str, Any]:
    """What the server reads from a concept file (never what a client claims about it)."""
    return {
        "media_type": pf.MEDIA_TYPE,
        "digest": pf.content_digest(data),
        "weights_digest": concept.weights_digest,
        "size": len(data),
        "version": concept.version,
        "name": concept.name,
        "token": concept.token,
        "superclass": concept.superclass,
        "family": concept.family.name,
        "base_fingerprint": concept.base_fingerprint,
        "dtype": concept.dtype,
        "signers": [signature.key_id for signature in concept.signatures],
    }


def create_app() -> FastAPI:
    """Build the registry application."""
    app = FastAPI(title="pfx registry", version="0.1.0")

    @app.get("/healthz")
    def health() -> dict[str, str]:
        """Liveness: the process is up."""
        return {"status": "ok", "service": "pfx-registry"}

    @app.post("/v1/concepts/validate")
    async def validate(request: Request) -> JSONResponse:
        """Validate the request body as a concept file and describe it, or answer its error."""
        data = await _read_limited(request, pf.MAX_FILE_SIZE)
        if data is None:
            return error_response(
                413, pf.ErrorCode.FILE_TOO_LARGE, f"the body exceeds {pf.MAX_FILE_SIZE} bytes"
            )
        try:
            concept = pf.loads(data)
        except pf.FormatError as error:
            return error_response(422, error.code, error.message)
        return JSONResponse(describe(concept, data))

    return app
