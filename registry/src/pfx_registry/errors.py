"""The registry's errors: a stable code, an HTTP status and a one-line message.

Every failure a client can cause is raised as :class:`ApiError` and answered as
``{"error": {"code": ..., "message": ...}}`` with its status; concept files refused by
:mod:`perfusion_format` keep the format's code (422). A backend that is down is 503. The codes are
listed in spec/registry-api.md.
"""

from __future__ import annotations

from enum import StrEnum


class Code(StrEnum):
    """Stable error codes of the registry API (besides perfusion_format's file codes)."""

    BAD_REQUEST = "BAD_REQUEST"
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    BLOB_UNKNOWN = "BLOB_UNKNOWN"
    DIGEST_INVALID = "DIGEST_INVALID"
    VERSION_EXISTS = "VERSION_EXISTS"
    TAG_PROTECTED = "TAG_PROTECTED"
    NAME_INVALID = "NAME_INVALID"
    NAME_TAKEN = "NAME_TAKEN"
    SIGNATURE_REQUIRED = "SIGNATURE_REQUIRED"
    KEY_INVALID = "KEY_INVALID"
    TOO_LARGE = "TOO_LARGE"
    TOO_MANY = "TOO_MANY"
    UNSUPPORTED_MEDIA = "UNSUPPORTED_MEDIA"
    RATE_LIMITED = "RATE_LIMITED"
    UNAVAILABLE = "UNAVAILABLE"
    INVALID_CURSOR = "INVALID_CURSOR"
    #: a ``Range`` that starts past the blob's end (416)
    RANGE_NOT_SATISFIABLE = "RANGE_NOT_SATISFIABLE"
    #: a signed download URL whose expiry has passed (410)
    URL_EXPIRED = "URL_EXPIRED"
    #: a web catalog form without its session's anti-forgery value, or sent from another site
    CSRF_FAILED = "CSRF_FAILED"


class ApiError(Exception):
    """A failure answered to the client with ``status`` and ``{"error": {code, message}}``."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def not_found(what: str) -> ApiError:
    """404 NOT_FOUND — also what a private thing answers to those who may not see it."""
    return ApiError(404, Code.NOT_FOUND, f"{what} not found")


class BackendUnavailable(Exception):
    """The blob store or the database cannot be reached (answered as 503 UNAVAILABLE)."""


class TransactionConflict(BackendUnavailable):
    """The database aborted a transaction for a deadlock or a serialization failure, or a row it
    needed was created and deleted under it: running it again is safe, and
    :func:`pfx_registry.state.run_write` does (a conflict that outlasts every attempt is a 503)."""
