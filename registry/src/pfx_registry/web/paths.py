"""Which paths are the catalog's: pages take every path except those whose first segment is the
API's or operations' (``/v1``, ``/v2``, ``/healthz`` …). Errors on the catalog's paths are HTML
pages; on the others they stay JSON, and the catalog's ``/{ns}/…`` routes never match them (a
wrong method on an API path stays a 405, an unknown API path a JSON 404)."""

from __future__ import annotations

import re

from starlette.convertors import StringConvertor, register_url_convertor

__all__ = ["API_SEGMENTS", "is_page_path"]

#: First path segments of the API and of operations (all of them reserved namespace names).
API_SEGMENTS = ("v1", "v2", "healthz", "readyz", "metrics", "openapi.json", "docs", "redoc")


class NamespaceSegment(StringConvertor):
    """A path segment that is not one of :data:`API_SEGMENTS` (the ``page_ns`` convertor)."""

    regex = "(?!(?:" + "|".join(re.escape(segment) for segment in API_SEGMENTS) + ")(?![^/]))[^/]+"


register_url_convertor("page_ns", NamespaceSegment())


def is_page_path(path: str) -> bool:
    """Whether ``path`` is the catalog's (its errors are HTML pages) rather than the API's."""
    return path.lstrip("/").split("/", 1)[0] not in API_SEGMENTS
