"""Errors under /v2/ in the OCI distribution spec's shape:
``{"errors": [{"code": CODE, "message": TEXT, "detail": {...}}]}``.

Routes of /v2/ raise OCI codes themselves (:class:`pfx_registry.service.oci.OciError`); errors
raised by the service calls they share with /v1 carry pfx codes, which are translated here (the
pfx code stays in ``detail.pfx_code``). Every 401 carries the /v2/ challenge.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

from pfx_registry.errors import Code

from .auth import challenge

__all__ = ["is_distribution_path", "oci_error_response"]

#: pfx error codes and the OCI codes they are answered with under /v2/.
_OCI_CODES = {
    Code.NOT_FOUND: "NAME_UNKNOWN",
    Code.UNAUTHORIZED: "UNAUTHORIZED",
    Code.FORBIDDEN: "DENIED",
    Code.TAG_PROTECTED: "DENIED",
    Code.SIGNATURE_REQUIRED: "DENIED",
    Code.VERSION_EXISTS: "DENIED",
    Code.NAME_INVALID: "NAME_INVALID",
    Code.DIGEST_INVALID: "DIGEST_INVALID",
    Code.BLOB_UNKNOWN: "BLOB_UNKNOWN",
    Code.RATE_LIMITED: "TOOMANYREQUESTS",
    Code.TOO_LARGE: "SIZE_INVALID",
    Code.BAD_REQUEST: "UNSUPPORTED",
    Code.METHOD_NOT_ALLOWED: "UNSUPPORTED",
    Code.UNSUPPORTED_MEDIA: "UNSUPPORTED",
}


def _scope(request: Request) -> str | None:
    """The scope a 401 asks a token for: the repository of the path, to pull (reads) or to
    pull and push (writes)."""
    parts = request.url.path.split("/")
    if len(parts) < 5 or parts[3] in ("", "token"):
        return None
    actions = "pull" if request.method in ("GET", "HEAD") else "pull,push"
    return f"repository:{parts[2]}/{parts[3]}:{actions}"


def is_distribution_path(path: str) -> bool:
    """Whether ``path`` is under /v2 (its errors take the OCI shape)."""
    return path == "/v2" or path.startswith("/v2/")


def oci_error_response(
    request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """An error answered under /v2/."""
    oci_code = _OCI_CODES.get(code, code)  # type: ignore[call-overload]
    if oci_code == "DENIED":
        status = 403  # a refused publish (422, 409 under /v1) is a denial to OCI clients
    detail = {"pfx_code": str(code)} if oci_code != code else {}
    printable = message.encode("utf-8", "backslashreplace").decode("utf-8")
    headers = dict(headers or {})
    if status == 401 and "realm=" not in headers.get("WWW-Authenticate", ""):
        headers.update(challenge(request, _scope(request)))
    body = {"errors": [{"code": oci_code, "message": printable, "detail": detail}]}
    return JSONResponse(body, status_code=status, headers=headers)
