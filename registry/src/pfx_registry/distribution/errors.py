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


def is_distribution_path(path: str) -> bool:
    """Whether ``path`` is under /v2 (its errors take the OCI shape)."""
    return path == "/v2" or path.startswith("/v2/")


def oci_error_response(
    request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """An error answered under /v2/."""
    oci_code = _OCI_CODES.get(code, code)  # type: ignore[call-overload]
    detail = {"pfx_code": str(code)} if oci_code != code else {}
    printable = message.encode("utf-8", "backslashreplace").decode("utf-8")
    headers = dict(headers or {})
    if status == 401:
        headers.update(challenge(request))
    body = {"errors": [{"code": oci_code, "message": printable, "detail": detail}]}
    return JSONResponse(body, status_code=status, headers=headers)
